//! The private extension that binds a per-task X.509-SVID to its task: its
//! OID, and its DER (written by the CA, read back by the CA's validation
//! and by enforcers).

/// [`TASK_EXTENSION_OID`] in dotted form.
pub const TASK_EXTENSION_OID_STR: &str = "2.25.988614677842070252";

/// OID of the private extension that binds a certificate to its task:
/// `2.25.988614677842070252`, under the UUID arc (X.667) from 63 random bits
/// (not a UUID: rcgen writes OID arcs of at most 64 bits, so a 128-bit UUID
/// arc cannot be signed here). asn1-rs, OpenSSL and pyca/cryptography read
/// it; Go's `crypto/x509` reads at most 31 bits per arc, so a Go parser
/// refuses certificates carrying any arc this large.
pub const TASK_EXTENSION_OID: &[u64] = &[2, 25, 988_614_677_842_070_252];

/// What the task extension says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskBinding {
    /// The task id.
    pub task_id: String,
    /// SPIFFE ID of the task's holder.
    pub holder: String,
    /// Accountable owner; empty when none.
    pub owner: String,
    /// Begun through break-glass.
    pub break_glass: bool,
}

/// ```text
/// TaskBinding ::= SEQUENCE {
///   taskId      UTF8String,
///   taskHolder  UTF8String,                       -- SPIFFE ID
///   owner       [0] IMPLICIT UTF8String OPTIONAL, -- accountable owner
///   breakGlass  [1] IMPLICIT BOOLEAN DEFAULT FALSE }
/// ```
pub fn task_extension_der(b: &TaskBinding) -> Vec<u8> {
    let mut body = der_tlv(0x0c, b.task_id.as_bytes());
    body.extend(der_tlv(0x0c, b.holder.as_bytes()));
    if !b.owner.is_empty() {
        body.extend(der_tlv(0x80, b.owner.as_bytes()));
    }
    // DER omits a value equal to its DEFAULT.
    if b.break_glass {
        body.extend(der_tlv(0x81, &[0xff]));
    }
    der_tlv(0x30, &body)
}

/// Reads a `TaskBinding` extension value back.
pub fn parse_task_extension(der: &[u8]) -> Option<TaskBinding> {
    let (tag, body, rest) = read_tlv(der)?;
    if tag != 0x30 || !rest.is_empty() {
        return None;
    }
    let (t1, task, rest) = read_tlv(body)?;
    let (t2, holder, mut rest) = read_tlv(rest)?;
    if t1 != 0x0c || t2 != 0x0c {
        return None;
    }
    let mut b = TaskBinding {
        task_id: String::from_utf8(task.to_vec()).ok()?,
        holder: String::from_utf8(holder.to_vec()).ok()?,
        ..Default::default()
    };
    if let Some((0x80, owner, r)) = read_tlv(rest) {
        // No owner is written as no field: a present one is never empty.
        if owner.is_empty() {
            return None;
        }
        b.owner = String::from_utf8(owner.to_vec()).ok()?;
        rest = r;
    }
    if let Some((0x81, v, r)) = read_tlv(rest) {
        if v != [0xff] {
            return None;
        }
        b.break_glass = true;
        rest = r;
    }
    rest.is_empty().then_some(b)
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        // DER (X.690 10.1) has one length encoding: the short form below
        // 128, else the fewest octets, so no leading zero octet.
        if n == 0 || n > 4 || rest.len() < n || rest[0] == 0 {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        if len < 0x80 {
            return None;
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}
