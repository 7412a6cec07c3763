//! The socket's placeholders against real files and a real TCP peer.

use super::*;
use std::io::Write;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

async fn pair() -> (SendfileSocket, FileRanges, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap());
    let (client, accepted) = tokio::join!(client, listener.accept());
    let (socket, ranges) = SendfileSocket::new(accepted.unwrap().0, counters());
    (socket, ranges, client.unwrap())
}

/// A connection whose file ranges all go by the copying fallback.
async fn copying_pair() -> (SendfileSocket, FileRanges, TcpStream) {
    let (mut socket, _, client) = pair().await;
    socket.ranges = FileRanges::copy_only();
    let ranges = socket.ranges.clone();
    (socket, ranges, client)
}

/// Writes `slices` as hyper does: vectored, advancing past what each call took.
async fn write_as_hyper(socket: &mut SendfileSocket, slices: Vec<&[u8]>) {
    let mut queue: VecDeque<&[u8]> = slices.into_iter().collect();
    while let Some(front) = queue.pop_front() {
        let mut io: Vec<IoSlice> = vec![IoSlice::new(front)];
        io.extend(queue.iter().map(|s| IoSlice::new(s)));
        let n = std::future::poll_fn(|cx| Pin::new(&mut *socket).poll_write_vectored(cx, &io))
            .await
            .unwrap();
        if n < front.len() {
            queue.push_front(&front[n..]);
            continue;
        }
        let mut rest = n - front.len();
        while rest > 0 {
            let next = queue.pop_front().unwrap();
            let took = rest.min(next.len());
            rest -= took;
            if took < next.len() {
                queue.push_front(&next[took..]);
            }
        }
    }
    socket.shutdown().await.unwrap();
}

fn counters() -> FileRangeCounters {
    FileRangeCounters {
        sendfile: IntCounter::new("sendfile", "sendfile").unwrap(),
        copied: IntCounter::new("copied", "copied").unwrap(),
    }
}

fn file_of(bytes: &[u8]) -> Arc<File> {
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(bytes).unwrap();
    Arc::new(file)
}

#[tokio::test]
async fn placeholders_become_their_file_ranges_between_ordinary_bytes() {
    let (mut socket, ranges, mut client) = pair().await;
    let content: Vec<u8> = (0..3 * MAX_RANGE as u32).map(|i| (i % 251) as u8).collect();
    let file = file_of(&content);
    let a = ranges.placeholder(FileRange::new(file.clone(), 10, MAX_RANGE));
    let b = ranges.placeholder(FileRange::new(file.clone(), 2 * MAX_RANGE as u64, 1000));
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        got
    });
    write_as_hyper(&mut socket, vec![b"head", &a, b"mid", &b, b"tail"]).await;
    assert_eq!(
        socket.counters.sendfile.get(),
        (MAX_RANGE + 1000) as u64,
        "both ranges went by sendfile"
    );
    drop(socket);
    let got = reader.await.unwrap();
    let mut want = b"head".to_vec();
    want.extend_from_slice(&content[10..10 + MAX_RANGE]);
    want.extend_from_slice(b"mid");
    want.extend_from_slice(&content[2 * MAX_RANGE..2 * MAX_RANGE + 1000]);
    want.extend_from_slice(b"tail");
    assert_eq!(got.len(), want.len());
    assert!(got == want);
}

#[tokio::test]
async fn ranges_ending_mid_file_are_sent_exactly_by_sendfile_and_by_copying() {
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let file = file_of(&content);
    // Lengths that are no multiple of the copy's 64 KiB reads, ending before the file does.
    let spans = [(10, 100_000), (150_000, 70_001), (0, 65_537)];
    for copying in [false, true] {
        let (mut socket, ranges, mut client) = if copying {
            copying_pair().await
        } else {
            pair().await
        };
        let placeholders: Vec<Bytes> = spans
            .iter()
            .map(|&(offset, len)| ranges.placeholder(FileRange::new(file.clone(), offset, len)))
            .collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut slices: Vec<&[u8]> = Vec::new();
        let mut want = Vec::new();
        for (placeholder, &(offset, len)) in placeholders.iter().zip(&spans) {
            slices.extend([b"|" as &[u8], placeholder]);
            want.push(b'|');
            want.extend_from_slice(&content[offset as usize..offset as usize + len]);
        }
        write_as_hyper(&mut socket, slices).await;
        let total: usize = spans.iter().map(|&(_, len)| len).sum();
        let (spliced, copied) = (socket.counters.sendfile.get(), socket.counters.copied.get());
        assert_eq!(
            (spliced, copied),
            if copying {
                (0, total as u64)
            } else {
                (total as u64, 0)
            }
        );
        drop(socket);
        let got = reader.await.unwrap();
        assert_eq!(got.len(), want.len(), "copying: {copying}");
        assert!(got == want, "copying: {copying}");
    }
}

#[tokio::test]
async fn a_placeholder_out_of_step_cuts_the_connection() {
    let (mut socket, ranges, _client) = pair().await;
    let file = file_of(b"0123456789");
    let placeholder = ranges.placeholder(FileRange::new(file.clone(), 0, 10));
    // Half of it, as if hyper had skipped bytes: refused.
    let r = socket.write(&placeholder[5..]).await;
    assert!(r.is_err());
    // A placeholder with nothing queued: refused.
    let (mut socket, _ranges, _client) = pair().await;
    assert!(socket.write(&placeholder).await.is_err());
}

#[tokio::test]
async fn a_skipped_placeholder_cannot_pass_for_the_next_one() {
    let (mut socket, ranges, _client) = pair().await;
    let file = file_of(&[7u8; 100]);
    let first = ranges.placeholder(FileRange::new(file.clone(), 0, 100));
    let second = ranges.placeholder(FileRange::new(file, 0, 100));
    assert_ne!(first.as_ptr(), second.as_ptr());
    // As if hyper had dropped the first without writing it.
    assert!(socket.write(&second).await.is_err());
}

#[tokio::test]
async fn a_file_that_cannot_be_spliced_is_copied() {
    // Files of /proc often refuse splice (EINVAL): the bytes must come through all the same.
    let path = "/proc/self/mountinfo";
    let content = std::fs::read(path).unwrap();
    let len = content.len().min(4096);
    let (mut socket, ranges, mut client) = pair().await;
    let placeholder =
        ranges.placeholder(FileRange::new(Arc::new(File::open(path).unwrap()), 0, len));
    let mut sent = 0;
    while sent < len {
        sent += socket.write(&placeholder[sent..]).await.unwrap();
    }
    socket.shutdown().await.unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    // The file is read twice and may change in between; its start is stable.
    assert_eq!(got[..64], content[..64]);
    assert_eq!(got.len(), len);
}

#[tokio::test]
async fn a_file_shorter_than_its_range_cuts_the_connection() {
    let (mut socket, ranges, _client) = pair().await;
    let placeholder = ranges.placeholder(FileRange::new(file_of(b"short"), 0, 100));
    let mut sent = 0;
    let err = loop {
        match socket.write(&placeholder[sent..]).await {
            Ok(n) => sent += n,
            Err(e) => break e,
        }
    };
    assert_eq!(sent, 5);
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}
