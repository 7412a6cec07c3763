//! The writer of a fill: a task that appends what the feeder sends to the temp file, hashes it,
//! publishes progress, verifies and commits. It works on a blocking thread while pieces keep
//! coming (and for the start and the commit), and gives the thread back once its source has
//! sent nothing for `IDLE`, so fills waiting on a slow or stalled upstream never take the
//! threads warm hits, logins and manifest commits need.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use super::assembly::Assembly;
use super::buffers::BufferPool;
use super::feeding::{FillWriter, Message, Piece, PieceSender, WRITE_BUDGET};
use super::progress::{FillState, Progress};
use super::window::NewestBytes;
use crate::cache::error::{check_blob, Error};
use crate::cache::store::{Committed, EntryKey, FillRoom, Store};
use crate::metrics::Source;
use crate::oci::{Digest, Verifier};

/// Messages in the writer's queue (the byte budget is what really bounds it).
const WRITE_QUEUE: usize = 1024;
/// Progress is published to readers at least this many bytes at a time (and at the end), so
/// readers following a fill wake for reads worth making, not for every upstream chunk...
const PUBLISH_EVERY: u64 = 256 * 1024;
/// ...or when no more bytes came for this long, so a slow upstream still reaches them promptly.
const PUBLISH_LINGER: Duration = Duration::from_millis(2);

/// Runs once, when a fill leaves the table of fills in flight.
pub struct Leave(Option<Box<dyn FnOnce() + Send>>);

impl Leave {
    pub fn new(leave: impl FnOnce() + Send + 'static) -> Leave {
        Leave(Some(Box::new(leave)))
    }

    fn now(&mut self) {
        if let Some(leave) = self.0.take() {
            leave();
        }
    }
}

pub struct WriteJob {
    store: Arc<Store>,
    digest: Digest,
    temp_path: PathBuf,
    file: Arc<File>,
    progress: watch::Sender<Progress>,
    newest: Arc<NewestBytes>,
    /// Disk space held for the declared length until the fill ends (claimed in steps when
    /// the filesystem is short).
    room: Option<FillRoom>,
    leave: Leave,
    /// Whether the fill has ended (committed, or failed and cleaned up): then nothing is left
    /// for `Drop` to undo.
    ended: bool,
}

impl WriteJob {
    pub fn new(
        store: Arc<Store>,
        digest: Digest,
        temp_path: PathBuf,
        file: Arc<File>,
        progress: watch::Sender<Progress>,
        newest: Arc<NewestBytes>,
        leave: Leave,
    ) -> WriteJob {
        WriteJob {
            store,
            digest,
            temp_path,
            file,
            progress,
            newest,
            room: None,
            leave,
            ended: false,
        }
    }

    /// Starts the writer task; the returned writer feeds it, through buffers from `buffers`.
    pub fn spawn(self, buffers: BufferPool) -> FillWriter {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let writing = Writing {
            progressing: Progressing {
                assembly: Assembly::new(Verifier::new(self.digest.algorithm())),
                published: 0,
            },
            job: self,
            rx,
            total: None,
        };
        tokio::spawn(writing.run());
        FillWriter {
            pieces: PieceSender {
                tx,
                budget: Arc::new(Semaphore::new(WRITE_BUDGET)),
                buffers,
            },
        }
    }

    /// Verifies what was written and commits it, or cleans up after a failure; the verdict
    /// goes to the feeder when it asked for one.
    fn conclude(mut self, received: Received) {
        let (result, reply) = match received {
            Received::Finished {
                verifier,
                written,
                total,
                reply,
            } => {
                let result = check_blob(&self.digest, *verifier, written, total).and_then(|()| {
                    // Readers may finish as soon as the bytes are known good; the commit is
                    // only for the cache.
                    self.progress.send_modify(|p| p.state = FillState::Verified);
                    self.commit()
                });
                (result, Some(reply))
            }
            Received::Abandoned => (Err(Error::Abandoned), None),
            Received::Failed(e) => (Err(e), None),
        };
        if let Err(e) = &result {
            self.end(e.clone());
        }
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }

    /// Writes `piece` and hashes what became contiguous, telling the readers every
    /// `PUBLISH_EVERY` bytes of prefix.
    fn write(&mut self, writing: &mut Progressing, piece: Piece) -> Result<(), Error> {
        let offset = piece.offset;
        if let Some(room) = self.room.as_mut() {
            if room.received(piece.bytes.len() as u64) && !self.store.grow_room(room, &self.file) {
                return Err(Error::NoSpace(room.whole()));
            }
        }
        let written = self
            .file
            .write_all_at(&piece.bytes, offset)
            .and_then(|()| writing.assembly.add(offset, &piece.bytes, &self.file));
        match written {
            // At the end of the prefix: the readers at the head want it next.
            Ok(true) => self.newest.push(offset, piece.bytes, piece.held),
            Ok(false) => {}
            Err(e) => {
                // Stop now: the readers are waiting for bytes that will not come.
                self.store.write_failed(&e);
                return Err(Error::write(e));
            }
        }
        if writing.assembly.prefix() >= writing.published + PUBLISH_EVERY {
            self.publish(writing);
        }
        Ok(())
    }

    /// Tells the readers how much of the blob they may read.
    fn publish(&self, writing: &mut Progressing) {
        writing.published = writing.assembly.prefix();
        let published = writing.published;
        self.progress.send_modify(|p| p.written = published);
    }

    /// The source answered: claims room for the declared length and tells the readers.
    fn start(&mut self, declared: Option<u64>, from: Source) -> Result<(), Error> {
        // Refuse before the first byte, while every reader can still be served another way,
        // rather than fail half-way when the disk runs out.
        // The filesystem allocates the whole blob at once, instead of a few pages at every
        // write; where it cannot (some network filesystems), the writes allocate as they go.
        if let Some(needed) = declared {
            self.room = self.store.claim_room(needed, &self.file);
            if self.room.is_none() {
                return Err(Error::NoSpace(needed));
            }
        }
        self.progress.send_modify(|p| {
            p.total = declared;
            p.from = from;
            p.state = FillState::Streaming;
            p.streaming_since = Some(std::time::Instant::now());
        });
        Ok(())
    }

    /// Stores the verified blob (unless it is larger than the whole cache: then the readers are
    /// served from the temp file, which goes away with them).
    fn commit(&mut self) -> Result<(), Error> {
        let key = EntryKey::blob(&self.digest);
        let committed = self.store.commit(&self.temp_path, &self.file, &key);
        self.ended = true;
        self.leave.now();
        self.newest.clear();
        match committed {
            Ok(Committed::Stored | Committed::TooLarge) => Ok(()),
            Err(e) => Err(Error::write(e)),
        }
    }

    /// Ends the fill without a commit: publishes `failure` (unless the bytes were already
    /// verified: then the readers' bytes were right, and only the cache copy is lost) and
    /// drops the temp file. The one clean-up, whichever way the fill fails: an error, or the
    /// writer unwinding (through `Drop`).
    fn end(&mut self, failure: Error) {
        self.ended = true;
        // Leave the table before announcing the failure, so a request that arrives in
        // between starts a fresh fill instead of joining this dead one.
        self.leave.now();
        self.progress.send_modify(|p| {
            if !p.state.is_verified() {
                p.state = FillState::Failed(failure);
            }
        });
        self.newest.clear();
        let _ = std::fs::remove_file(&self.temp_path);
    }
}

impl Drop for WriteJob {
    /// Should the writer panic, its fill must not stay in the table (every later request
    /// for the digest would join a fill that never ends), and its readers, even those still
    /// waiting for the source's answer, must see it failed.
    fn drop(&mut self) {
        if !self.ended {
            self.end(Error::Abandoned);
        }
    }
}

/// How the feeder's messages ended.
enum Received {
    /// Every piece is in: the hash of the whole, its length, the declared length, and where
    /// the verdict goes.
    Finished {
        verifier: Box<Verifier>,
        written: u64,
        total: Option<u64>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// The feeder went away without finishing.
    Abandoned,
    Failed(Error),
}

/// A writer whose source sends nothing for this long gives its blocking thread back, so fills
/// waiting on slow or stalled sources hold none.
const IDLE: Duration = Duration::from_millis(20);

/// Why the writer left its blocking thread.
enum Pause {
    /// Nothing came for `IDLE`.
    Idle,
    /// A message other than a piece came (`None`: the feeder went away).
    Next(Option<Message>),
}

/// The blob as assembled so far and what the readers were told of it.
struct Progressing {
    assembly: Assembly,
    /// The prefix length the readers were last told of.
    published: u64,
}

/// What the writer task holds between messages: handed to a blocking thread for each step that
/// touches the disk, and back.
struct Writing {
    job: WriteJob,
    rx: mpsc::Receiver<Message>,
    progressing: Progressing,
    /// The length the source declared.
    total: Option<u64>,
}

impl Writing {
    /// The writer task: owns the temp file until it is committed or removed.
    async fn run(self) {
        let Some((job, received)) = self.receive().await else {
            return;
        };
        let _ = tokio::task::spawn_blocking(move || job.conclude(received)).await;
    }

    /// Writes what the feeder sends until it finishes, fails or goes away; `None` when the
    /// runtime shut down under it. Holds no thread while nothing comes.
    async fn receive(mut self) -> Option<(WriteJob, Received)> {
        // A message the blocking side took from the queue and handed back.
        let mut next = None;
        loop {
            let message = match next.take() {
                Some(message) => message,
                None => self.rx.recv().await,
            };
            match message {
                Some(Message::Start(declared, from)) => {
                    let started;
                    (self, started) = self.on_disk(move |w| w.job.start(declared, from)).await?;
                    if let Err(e) = started {
                        return Some((self.job, Received::Failed(e)));
                    }
                    self.total = declared;
                }
                Some(Message::Piece(piece)) => {
                    let written;
                    (self, written) = self.on_disk(move |w| w.write_while_busy(piece)).await?;
                    match written {
                        Ok(Pause::Idle) => {}
                        Ok(Pause::Next(message)) => next = Some(message),
                        Err(e) => return Some((self.job, Received::Failed(e))),
                    }
                }
                Some(Message::Finish(reply)) => {
                    self.job.publish(&mut self.progressing);
                    let contiguous = self.progressing.assembly.prefix();
                    let Writing {
                        job,
                        progressing,
                        total,
                        ..
                    } = self;
                    let received = match progressing.assembly.finish() {
                        Some((verifier, written)) => Received::Finished {
                            verifier: Box::new(verifier),
                            written,
                            total,
                            reply,
                        },
                        None => Received::Failed(Error::Gaps { contiguous }),
                    };
                    return Some((job, received));
                }
                Some(Message::Fail(e)) => {
                    return Some((self.job, Received::Failed(Error::Source(e))))
                }
                None => return Some((self.job, Received::Abandoned)),
            }
        }
    }

    /// On a blocking thread: writes `first` and every piece that follows while they keep
    /// coming, and gives the thread back once none came for `IDLE`, or another message did.
    /// Bytes not yet published wait at most `PUBLISH_LINGER` for more to join them: a fast
    /// source is published in `PUBLISH_EVERY` steps, a trickle promptly.
    fn write_while_busy(&mut self, first: Piece) -> Result<Pause, Error> {
        let runtime = tokio::runtime::Handle::current();
        let mut piece = first;
        loop {
            self.job.write(&mut self.progressing, piece)?;
            let message = loop {
                let unpublished = self.progressing.assembly.prefix() > self.progressing.published;
                let wait = if unpublished { PUBLISH_LINGER } else { IDLE };
                match runtime.block_on(tokio::time::timeout(wait, self.rx.recv())) {
                    Ok(message) => break message,
                    Err(_) if unpublished => self.job.publish(&mut self.progressing),
                    Err(_) => return Ok(Pause::Idle),
                }
            };
            match message {
                Some(Message::Piece(next)) => piece = next,
                other => return Ok(Pause::Next(other)),
            }
        }
    }

    /// Runs `step` on a blocking thread, and hands this back with its outcome; `None` when the
    /// runtime shut down before the step ran (the job was dropped, which cleans up).
    async fn on_disk<T: Send + 'static>(
        self,
        step: impl FnOnce(&mut Writing) -> T + Send + 'static,
    ) -> Option<(Writing, T)> {
        let done = tokio::task::spawn_blocking(move || {
            let mut writing = self;
            let outcome = step(&mut writing);
            (writing, outcome)
        })
        .await;
        match done {
            Ok(done) => Some(done),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => None,
        }
    }
}
