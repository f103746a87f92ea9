//! A listening socket as a [`mio::event::Source`] that accepts front-ends.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use vhost_backend::Device;
use vhost_backend::os::socket::remove_stale_socket;

use crate::{Error, Session};

/// Accepts front-end connections; register it in your `Poll` and, on each of its events,
/// accept until [`accept`](Self::accept) returns `None` (edge-triggered).
///
/// A listener made with [`bind`](Self::bind) removes its socket file when dropped.
#[derive(Debug)]
pub struct Listener {
    inner: UnixListener,
    path: Option<PathBuf>,
}

impl Listener {
    /// Listens on `path`. A stale socket file there (nobody accepts on it) is removed
    /// first; a live one is an error, and so is any other kind of file.
    pub fn bind(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        remove_stale_socket(path)?;
        let inner = UnixListener::bind(path).map_err(|e| Error::io("bind", e))?;
        Ok(Listener {
            inner,
            path: Some(path.to_owned()),
        })
    }

    /// Accepts on a listener the caller made (switched to non-blocking mode).
    pub fn from_std(listener: std::os::unix::net::UnixListener) -> Result<Self, Error> {
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("fcntl(O_NONBLOCK)", e))?;
        Ok(Listener {
            inner: UnixListener::from_std(listener),
            path: None,
        })
    }

    /// The next pending connection (non-blocking), or `None` when there is none left.
    /// Connections aborted before they were accepted are skipped.
    pub fn accept(&self) -> Result<Option<UnixStream>, Error> {
        loop {
            match self.inner.accept() {
                Ok((s, _)) => return Ok(Some(s)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => return Err(Error::io("accept", e)),
            }
        }
    }

    /// [`accept`](Self::accept), wrapped in a [`Session`] serving `device` (register it
    /// next).
    pub fn accept_session<D: Device + ?Sized>(
        &self,
        device: Arc<D>,
    ) -> Result<Option<Session<D>>, Error> {
        Ok(self.accept()?.map(|s| Session::new(s, device)))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(path) = &self.path
            && let Err(e) = std::fs::remove_file(path)
            && e.kind() != io::ErrorKind::NotFound
        {
            log::warn!("vhost-io-mio: cannot remove {}: {e}", path.display());
        }
    }
}

impl mio::event::Source for Listener {
    fn register(&mut self, registry: &Registry, token: Token, _: Interest) -> io::Result<()> {
        registry.register(&mut self.inner, token, Interest::READABLE)
    }

    fn reregister(&mut self, registry: &Registry, token: Token, _: Interest) -> io::Result<()> {
        registry.reregister(&mut self.inner, token, Interest::READABLE)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        registry.deregister(&mut self.inner)
    }
}
