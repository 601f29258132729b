//! Reading bounded requests from io_uring sockets: every read has a size cap and a deadline, so
//! an oversized or trickling client costs a few kilobytes and a few seconds, never the daemon.
use std::{io, time::Duration};

use tokio::time::timeout;
use tokio_uring::buf::{BoundedBuf as _, BoundedBufMut};

/// The most one read takes in; the same buffer serves every read of a request.
const READ_CHUNK: usize = 4096;

/// A tokio-uring stream (TCP or Unix). Its futures are not `Send`, and need not be: tokio-uring
/// runs on one thread.
pub trait Stream {
    async fn read_some<B: BoundedBufMut>(&self, buf: B) -> (io::Result<usize>, B);
    async fn write_bytes(&self, data: Vec<u8>) -> io::Result<()>;
}

impl Stream for tokio_uring::net::TcpStream {
    async fn read_some<B: BoundedBufMut>(&self, buf: B) -> (io::Result<usize>, B) {
        self.read(buf).await
    }
    async fn write_bytes(&self, data: Vec<u8>) -> io::Result<()> {
        self.write_all(data).await.0
    }
}

impl Stream for tokio_uring::net::UnixStream {
    async fn read_some<B: BoundedBufMut>(&self, buf: B) -> (io::Result<usize>, B) {
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

/// Reads until `terminator` (included in the result), at most `max` bytes, within `limit`. Each
/// byte is searched once, however the client splits its request: a one-byte trickle costs as
/// much as one write.
pub async fn read_until(
    stream: &impl Stream,
    terminator: &[u8],
    max: usize,
    limit: Duration,
) -> Result<Vec<u8>, ReadError> {
    let read = async {
        let mut data = Vec::new();
        let mut buffer = Vec::with_capacity(READ_CHUNK.min(max));
        loop {
            // A terminator split across reads begins in the last `len - 1` bytes already searched.
            let searched = data.len().saturating_sub(terminator.len() - 1);
            let wanted = buffer.capacity().min(max - data.len());
            buffer.clear();
            let (result, chunk) = stream.read_some(buffer.slice(..wanted)).await;
            buffer = chunk.into_inner();
            match result {
                Ok(0) => return Err(ReadError::Truncated),
                Ok(n) => data.extend_from_slice(&buffer[..n]),
                Err(err) => return Err(ReadError::Io(err.kind())),
            }
            if let Some(end) = find(&data[searched..], terminator) {
                data.truncate(searched + end + terminator.len());
                return Ok(data);
            }
            if data.len() >= max {
                return Err(ReadError::TooLong);
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

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// Writes `parts` one by one into one end of a socket pair, each as its own read for the
    /// other end, and reads a request from that other end.
    fn read_parts(parts: &[&[u8]], terminator: &[u8], max: usize) -> Result<Vec<u8>, ReadError> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let parts: Vec<Vec<u8>> = parts.iter().map(|part| part.to_vec()).collect();
        let writer = std::thread::spawn(move || {
            let mut theirs = theirs;
            for part in parts {
                // The reader may be done before the last part: the rest then has nowhere to go.
                if theirs.write_all(&part).is_err() {
                    break;
                }
                // Each part arrives before the next is written, so the reader sees it alone.
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let read = tokio_uring::start(async {
            let ours = tokio_uring::net::UnixStream::from_std(ours);
            read_until(&ours, terminator, max, Duration::from_secs(30)).await
        });
        writer.join().unwrap();
        read
    }

    #[test]
    fn finds_a_terminator_split_across_reads() {
        let head: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        for split in 1..head.len() {
            let (first, second) = head.split_at(split);
            assert_eq!(
                read_parts(&[first, second], b"\r\n\r\n", 64).as_deref(),
                Ok(head),
                "split at {split}"
            );
        }
        let trickle: Vec<&[u8]> = head.chunks(1).collect();
        assert_eq!(read_parts(&trickle, b"\r\n\r\n", 64).as_deref(), Ok(head));
    }

    #[test]
    fn stops_at_the_terminator_and_at_the_limit() {
        assert_eq!(
            read_parts(&[b"{}\n{\"ignored\"}\n"], b"\n", 64).as_deref(),
            Ok(&b"{}\n"[..])
        );
        assert_eq!(
            read_parts(&[b"0123", b"4567", b"89"], b"\n", 8),
            Err(ReadError::TooLong)
        );
    }
}
