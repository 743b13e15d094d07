//! The enforcer's state on disk (`state_dir/feed.log`): the deny entries it
//! applied and the feed cursor they bring it to, so a restart resumes from
//! the cursor with the deny set it had, instead of a new snapshot.
//!
//! An append-only text file, one record a line, synced before the enforcer
//! acknowledges what it wrote: `E <until> <id>` denies a credential id until
//! a time, `C <seq>` says every event up to `seq` is in the lines above. A
//! crash can tear only the last line, which a reload skips. The file is
//! rewritten (to a temporary file, synced, renamed) from the live deny set
//! when dead lines outnumber live ones, and at every start.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::deny::DenySet;

const FILE: &str = "feed.log";
const HEADER: &str = "taskmint-enforce-state 1";

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file operation failed.
    #[error("`{path}`: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Another process holds the directory.
    #[error("`{path}` is in use by another enforcer (each needs its own state_dir)")]
    InUse {
        /// The lock file.
        path: PathBuf,
    },
    /// A line other than the last cannot be read.
    #[error("`{path}` line {line}: not a state record (`{text}`)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// The line, cut to 60 characters.
        text: String,
    },
}

/// What a previous run left.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every event up to this sequence was applied; `None`: start from a
    /// snapshot.
    pub cursor: Option<u64>,
    /// The deny entries, expired ones included (the caller drops them).
    pub entries: Vec<(String, i64)>,
}

/// An exclusive lock on a state directory, held for as long as the value
/// lives: two enforcers appending to one file would each acknowledge what
/// the other may overwrite.
#[derive(Debug)]
pub struct DirLock(#[allow(dead_code)] File);

impl DirLock {
    /// Takes the lock of `dir` (creating it), or says who has it.
    pub fn take(dir: &Path) -> Result<Self, StateError> {
        let path = dir.join("lock");
        let io = |error| StateError::Io {
            path: path.clone(),
            error,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match f.try_lock() {
            Ok(()) => Ok(Self(f)),
            Err(std::fs::TryLockError::WouldBlock) => Err(StateError::InUse { path }),
            Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
        }
    }
}

/// The open state file.
#[derive(Debug)]
pub struct State {
    dir: PathBuf,
    file: File,
    /// Lines in the file, for deciding when to rewrite it.
    lines: usize,
}

impl State {
    fn path(dir: &Path) -> PathBuf {
        dir.join(FILE)
    }

    /// Reads what `dir` holds (creating it if missing).
    pub fn load(dir: &Path) -> Result<Loaded, StateError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |error| StateError::Io { path, error }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = Self::path(dir);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
            Err(e) => return Err(io(&path)(e)),
        };
        let mut loaded = Loaded::default();
        // Lines as bytes: a byte that is not UTF-8 makes its line corrupt,
        // not the file unreadable.
        let mut lines = BufReader::new(file).split(b'\n').enumerate().peekable();
        while let Some((n, line)) = lines.next() {
            let line = String::from_utf8(line.map_err(io(&path))?)
                .unwrap_or_else(|_| "(not UTF-8)".into());
            let last = lines.peek().is_none();
            let corrupt = || StateError::Corrupt {
                path: path.clone(),
                line: n + 1,
                text: line.chars().take(60).collect(),
            };
            if n == 0 {
                if line != HEADER {
                    return Err(corrupt());
                }
                continue;
            }
            let mut parts = line.split(' ');
            let parsed = match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some("E"), Some(until), Some(id), None) if !id.is_empty() => until
                    .parse::<i64>()
                    .ok()
                    .map(|u| loaded.entries.push((id.to_owned(), u))),
                (Some("C"), Some(seq), None, None) => {
                    seq.parse::<u64>().ok().map(|s| loaded.cursor = Some(s))
                }
                _ => None,
            };
            match parsed {
                Some(()) => {}
                // A write torn by a crash: the lines before it stand.
                None if last => {}
                None => return Err(corrupt()),
            }
        }
        Ok(loaded)
    }

    /// Renames a damaged state file to `feed.log.corrupt-<unix seconds>`;
    /// the name it was given (or would have been).
    pub fn set_aside(dir: &Path) -> PathBuf {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let aside = dir.join(format!("{FILE}.corrupt-{secs}"));
        if let Err(e) = std::fs::rename(Self::path(dir), &aside) {
            tracing::warn!(error = %e, "cannot set the damaged enforcer state aside");
        }
        aside
    }

    /// Writes `deny` and `cursor` as the whole state of `dir`, replacing
    /// what was there, and opens it for appending.
    pub fn rewrite(dir: &Path, deny: &DenySet, cursor: Option<u64>) -> Result<Self, StateError> {
        Self::rewrite_entries(dir, &deny.entries().collect::<Vec<_>>(), cursor)
    }

    /// [`State::rewrite`] from a copy of the entries.
    pub fn rewrite_entries(
        dir: &Path,
        entries: &[(String, i64)],
        cursor: Option<u64>,
    ) -> Result<Self, StateError> {
        let path = Self::path(dir);
        let tmp = dir.join(format!("{FILE}.tmp"));
        let io = |p: &Path| {
            let path = p.to_owned();
            move |error| StateError::Io { path, error }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut lines = 1;
        {
            let mut w = std::io::BufWriter::new(File::create(&tmp).map_err(io(&tmp))?);
            writeln!(w, "{HEADER}").map_err(io(&tmp))?;
            for (id, until) in entries {
                writeln!(w, "E {until} {id}").map_err(io(&tmp))?;
                lines += 1;
            }
            if let Some(seq) = cursor {
                writeln!(w, "C {seq}").map_err(io(&tmp))?;
                lines += 1;
            }
            let f = w.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        Ok(Self {
            dir: dir.to_owned(),
            file,
            lines,
        })
    }

    /// Appends deny entries and the cursor they bring the state to, and
    /// syncs them: once this returns, a restart resumes after `cursor`.
    pub fn append(
        &mut self,
        entries: &[(String, i64)],
        cursor: Option<u64>,
    ) -> Result<(), StateError> {
        let mut buf = String::new();
        for (id, until) in entries {
            buf.push_str(&format!("E {until} {id}\n"));
        }
        if let Some(seq) = cursor {
            buf.push_str(&format!("C {seq}\n"));
        }
        let path = Self::path(&self.dir);
        self.file
            .write_all(buf.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|error| StateError::Io { path, error })?;
        self.lines += entries.len() + usize::from(cursor.is_some());
        Ok(())
    }

    /// The directory it lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the file has grown well past what `live` entries need.
    pub fn wants_rewrite(&self, live: usize) -> bool {
        self.lines > 2 * live + 4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_append_and_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let l = State::load(dir.path()).unwrap();
        assert!(l.cursor.is_none() && l.entries.is_empty());

        let mut deny = DenySet::new();
        deny.insert(&"aa".repeat(16), 100);
        let mut s = State::rewrite(dir.path(), &deny, None).unwrap();
        s.append(&[("bb".repeat(19), 200)], Some(7)).unwrap();
        s.append(&[], Some(9)).unwrap();
        let l = State::load(dir.path()).unwrap();
        assert_eq!(l.cursor, Some(9));
        let mut e = l.entries;
        e.sort();
        assert_eq!(e, vec![("aa".repeat(16), 100), ("bb".repeat(19), 200)]);
    }

    #[test]
    fn a_torn_last_line_is_skipped_a_bad_middle_line_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        std::fs::write(&path, format!("{HEADER}\nE 5 ab\nC 3\nE 9")).unwrap();
        let l = State::load(dir.path()).unwrap();
        assert_eq!(l.cursor, Some(3));
        assert_eq!(l.entries, vec![("ab".into(), 5)]);

        std::fs::write(&path, format!("{HEADER}\nE x ab\nC 3\n")).unwrap();
        let e = State::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("line 2: not a state record (`E x ab`)"), "{e}");

        std::fs::write(&path, "something else\n").unwrap();
        assert!(State::load(dir.path()).is_err());

        // A byte that is not UTF-8 is a corrupt line, not an I/O error.
        std::fs::write(
            &path,
            [format!("{HEADER}\nE 5 a").as_bytes(), &[0xff], b"b\nC 3\n"].concat(),
        )
        .unwrap();
        let e = State::load(dir.path()).unwrap_err();
        assert!(matches!(e, StateError::Corrupt { line: 2, .. }), "{e}");
        let aside = State::set_aside(dir.path());
        assert!(aside.exists() && !path.exists());
        assert!(State::load(dir.path()).unwrap().cursor.is_none());
    }

    #[test]
    fn one_process_per_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let held = DirLock::take(dir.path()).unwrap();
        let e = DirLock::take(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is in use by another enforcer"), "{e}");
        drop(held);
        DirLock::take(dir.path()).unwrap();
    }

    #[test]
    fn a_rewrite_repairs_what_a_failed_append_left() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = State::rewrite_entries(dir.path(), &[("aa".repeat(16), 9)], Some(1)).unwrap();
        // A write cut short mid-line, then more appended after it.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .unwrap()
            .write_all(b"E 12 bb")
            .unwrap();
        s.append(&[("cc".repeat(16), 9)], Some(3)).unwrap();
        assert!(
            State::load(dir.path()).is_err(),
            "the torn line is now in the middle"
        );
        let all = vec![
            ("aa".repeat(16), 9),
            ("bb".repeat(16), 12),
            ("cc".repeat(16), 9),
        ];
        State::rewrite_entries(dir.path(), &all, Some(3)).unwrap();
        let l = State::load(dir.path()).unwrap();
        assert_eq!((l.cursor, l.entries.len()), (Some(3), 3));
    }
}
