//! Reading bounded requests from io_uring sockets: every read has a size cap and a deadline, so
//! an oversized or trickling client costs a few kilobytes and a few seconds, never the daemon.
use std::{io, time::Duration};

use tokio::time::timeout;

/// A tokio-uring stream (TCP or Unix). Its futures are not `Send`, and need not be: tokio-uring
/// runs on one thread.
pub trait Stream {
    async fn read_some(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>);
    async fn write_bytes(&self, data: Vec<u8>) -> io::Result<()>;
}

impl Stream for tokio_uring::net::TcpStream {
    async fn read_some(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.read(buf).await
    }
    async fn write_bytes(&self, data: Vec<u8>) -> io::Result<()> {
        self.write_all(data).await.0
    }
}

impl Stream for tokio_uring::net::UnixStream {
    async fn read_some(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.read(buf).await
    }
    async fn write_bytes(&self, data: Vec<u8>) -> io::Result<()> {
        self.write_all(data).await.0
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    TooLong,
    TimedOut,
    /// The peer closed before sending the terminator.
    Truncated,
    Io(io::ErrorKind),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLong => write!(f, "request too long"),
            Self::TimedOut => write!(f, "request not received in time"),
            Self::Truncated => write!(f, "request truncated"),
            Self::Io(kind) => write!(f, "read failed: {kind}"),
        }
    }
}

/// Reads until `terminator` (included in the result), at most `max` bytes, within `limit`.
pub async fn read_until(
    stream: &impl Stream,
    terminator: &[u8],
    max: usize,
    limit: Duration,
) -> Result<Vec<u8>, ReadError> {
    let read = async {
        let mut data = Vec::new();
        loop {
            if let Some(end) = find(&data, terminator) {
                data.truncate(end + terminator.len());
                return Ok(data);
            }
            if data.len() >= max {
                return Err(ReadError::TooLong);
            }
            let (result, chunk) = stream.read_some(vec![0; max - data.len()]).await;
            match result {
                Ok(0) => return Err(ReadError::Truncated),
                Ok(n) => data.extend_from_slice(&chunk[..n]),
                Err(err) => return Err(ReadError::Io(err.kind())),
            }
        }
    };
    timeout(limit, read)
        .await
        .unwrap_or(Err(ReadError::TimedOut))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
