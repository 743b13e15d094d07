"""Verifying the issuer by its SPIFFE ID.

grpcio checks a server certificate against a DNS name or IP address only; it
never looks at URI SANs, and a serving X.509-SVID as SPIRE issues it carries
only its ``spiffe://`` URI SAN. So in ``spiffe`` mode the client does the TLS
itself: a local bridge, private to this process (a Unix socket in a 0700
directory), takes grpcio's plaintext HTTP/2 and carries each connection over
a TLS connection that Python's ``ssl`` made, where

* the server's chain is verified against the trust bundle of the expected
  SPIFFE ID's trust domain,
* its SVID must carry exactly one URI SAN, equal to the expected SPIFFE ID,
* the client presents its SVID (mTLS), and ALPN is ``h2``.

A connection that fails any of these is closed before a byte of a request is
sent. The SVID is read from the :class:`~taskmint.identity.Identity` for
every new connection, so a rotated SVID is used as soon as it is there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import tempfile
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError, ServerVerificationError
from .identity import Identity, Material

_PIPE_CHUNK = 64 * 1024
T = TypeVar("T")


def ssl_context(material: Material, key_dir: Path) -> ssl.SSLContext:
    """A client context presenting the SVID and trusting only the bundle.

    Hostname checking is off: the SPIFFE ID is checked instead, by
    :func:`verify_peer`. ``ssl`` loads keys from files only, so the SVID is
    written (0600) into ``key_dir``, a directory only this process uses.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=material.bundle_pem.decode("ascii"))
    cert, key = key_dir / "svid.pem", key_dir / "svid.key"
    for path, data in ((cert, material.cert_chain_pem), (key, material.key_pem)):
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(path.with_suffix(".tmp"), path)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def verify_peer(peercert: dict[str, Any] | None, expected: str) -> None:
    """Checks that the verified peer certificate is the SVID of ``expected``.

    Raises:
        ValueError: it is not (the message says what it is instead).
    """
    if not peercert:
        raise ValueError("the server presented no certificate")
    uris = [v for k, v in peercert.get("subjectAltName", ()) if k == "URI"]
    if len(uris) != 1:
        raise ValueError(
            f"its certificate is not an X.509-SVID: it has {len(uris)} URI SANs {uris!r}"
        )
    if uris[0] != expected:
        raise ValueError(f"its SPIFFE ID is `{uris[0]}`, not the expected `{expected}`")


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) into its parts."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"`{address}` is not host:port")
    return host.strip("[]"), int(port)


class SpiffeBridge:
    """A per-process TLS bridge that verifies the issuer by SPIFFE ID.

    ``target`` is the ``unix:`` address to give grpcio's insecure channel;
    nothing leaves the process in plaintext.
    """

    def __init__(
        self,
        address: str,
        identity: Identity,
        server_id: str,
        trust_domain: str,
        connect_timeout: float = 10.0,
    ) -> None:
        self._address = address
        self._host, self._port = split_address(address)
        self._identity = identity
        self._server_id = server_id
        self._trust_domain = trust_domain
        self._timeout = connect_timeout
        self._dir = Path(tempfile.mkdtemp(prefix="taskmint-"))  # mode 0700
        self._socket = self._dir / "grpc.sock"
        self._ctx: ssl.SSLContext | None = None
        self._ctx_of: Material | None = None
        self._lock = threading.Lock()
        #: Why the last connection to the server was refused, if it was.
        self.last_error: ServerVerificationError | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="taskmint-tls", daemon=True
        )
        self._thread.start()
        self._server: asyncio.AbstractServer | None = None
        self._call(self._listen()).result()

    @property
    def target(self) -> str:
        """The address grpcio dials."""
        return f"unix:{self._socket}"

    def _call(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _listen(self) -> None:
        self._server = await asyncio.start_unix_server(self._accept, path=str(self._socket))
        os.chmod(self._socket, 0o600)

    def _context(self) -> ssl.SSLContext:
        material = self._identity.material(self._trust_domain)
        with self._lock:
            if self._ctx is None or material != self._ctx_of:
                self._ctx = ssl_context(material, self._dir)
                self._ctx_of = material
            return self._ctx

    async def _dial(
        self, dns_name: str | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            ctx = self._context()
            if dns_name is not None:
                # What grpcio's own TLS will check: a DNS (or IP) SAN.
                ctx = ssl_context(self._identity.material(self._trust_domain), self._dir)
                ctx.check_hostname = True
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port, ssl=ctx, server_hostname=dns_name),
                self._timeout,
            )
        except ssl.SSLCertVerificationError as e:
            reason = e.verify_message or str(e)
            if dns_name is not None and "mismatch" in reason.lower():
                reason = (
                    f"its certificate has no DNS or IP SAN `{dns_name}`, which grpcio's TLS "
                    "checks; verify by SPIFFE ID (Verify.SPIFFE_ID) or give the issuer's "
                    f"SVID that name (SPIRE: `-dns {dns_name}` on its registration entry)"
                )
            raise ServerVerificationError(self._address, reason) from None
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as e:
            raise ConnectionError(
                f"cannot connect to `{self._address}`: {e or 'timed out'}"
            ) from None
        try:
            verify_peer(writer.get_extra_info("peercert"), self._server_id)
        except ValueError as e:
            writer.close()
            raise ServerVerificationError(self._address, str(e)) from None
        return reader, writer

    def check(self, dns_name: str | None = None) -> None:
        """Makes one verified connection now; with ``dns_name``, the serving
        certificate must also be valid for that name.

        Raises:
            ServerVerificationError: the server is not the expected issuer.
            ConnectionError: it cannot be reached.
        """

        async def once() -> None:
            _, writer = await self._dial(dns_name)
            writer.close()

        self._call(once()).result()

    async def _accept(self, local_r: asyncio.StreamReader, local_w: asyncio.StreamWriter) -> None:
        try:
            remote_r, remote_w = await self._dial()
        except ServerVerificationError as e:
            self.last_error = e
            local_w.close()
            return
        except (ConnectionError, ConfigError):
            # grpcio sees the connection fail and retries with backoff; a
            # ConfigError (an SVID file mid-rotation) is retried the same way.
            local_w.close()
            return
        self.last_error = None
        pipes = [
            asyncio.ensure_future(_pipe(local_r, remote_w)),
            asyncio.ensure_future(_pipe(remote_r, local_w)),
        ]
        try:
            await asyncio.wait(pipes)
        except asyncio.CancelledError:
            # The bridge is closing. Ending normally: asyncio's Unix server
            # reports a cancelled connection handler as an error.
            pass
        finally:
            for p in pipes:
                p.cancel()
            remote_w.close()
            local_w.close()

    def close(self) -> None:
        """Stops the bridge and removes its directory (and the SVID copy)."""

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            self._call(stop()).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        shutil.rmtree(self._dir, ignore_errors=True)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await src.read(_PIPE_CHUNK)
            if not data:
                break
            dst.write(data)
            await dst.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        try:
            dst.close()
        except (OSError, RuntimeError):
            pass
