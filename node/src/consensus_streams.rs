//! Consensus messages on one long-lived stream per peer and direction.
//!
//! Every height sends each peer a proposal, a prepare and a commit vote, and takes as
//! many from it. Sent as request-response, each message opened a Yamux stream of its
//! own, negotiated its protocol, waited for an empty answer and closed the stream
//! again: about a third of the CPU a lone block costs, over all four validators. Here
//! a writer task per peer keeps one stream open and writes each message on it as a
//! 4-byte little-endian length and the encoded message, several at a time when they
//! queue up. A reader task per inbound stream checks the length against the limit
//! before it reads or allocates anything, and hands the message to the driver.
//!
//! Delivery is as before: best effort, in order. A message that finds its stream
//! broken is tried once more on a new stream; one lost with a connection is recovered
//! by the engine's timeouts and resends, as a lost request was.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use libp2p_stream::{Control, IncomingStreams};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::debug;

use crate::network::NetEvent;

/// The protocol: frames of a length and an encoded consensus message.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/stele/consensus/2");

/// Messages waiting for one peer's writer at most; more are dropped (the engine
/// resends what matters).
pub const OUTBOX_MESSAGES: usize = 1024;

/// Messages written together at most (one buffer, one flush).
const WRITE_BATCH_MESSAGES: usize = 64;

/// Inbound consensus streams one peer may hold open at once. An honest peer has one,
/// and briefly two while its writer replaces a broken one; past the cap, new streams
/// are refused, so a faulty peer cannot make us keep a reader task per stream it opens.
pub const INBOUND_STREAMS_PER_PEER: usize = 4;

/// The least the messages waiting for the driver may hold in all, bytes; the budget is
/// four of the largest messages when that is more. The driver's queue also caps their
/// count, but a count of large messages could pin gigabytes.
const QUEUE_BYTES_MIN: usize = 64 << 20;

/// A message's share of the queue's byte budget, given back when the driver is done
/// with the message (when this is dropped).
pub struct QueuedBytes {
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for QueuedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QueuedBytes({})", self._permit.num_permits())
    }
}

/// `len` bytes of `budget`, if that many are free.
fn reserve(budget: &Arc<Semaphore>, len: usize) -> Option<QueuedBytes> {
    let len = u32::try_from(len).ok()?;
    Arc::clone(budget)
        .try_acquire_many_owned(len)
        .ok()
        .map(|permit| QueuedBytes { _permit: permit })
}

/// The most a frame's buffer takes before that many bytes of it have arrived; it then
/// doubles as they come, up to the frame's length.
const INITIAL_FRAME_CAPACITY: usize = 64 * 1024;

/// How long opening a stream, or writing a batch on it, may take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A message on its way, shared by the outboxes of every peer it goes to.
pub type Outgoing = Arc<Vec<u8>>;

/// Starts the writer for `peer`; it ends when the returned sender is dropped.
pub fn spawn_writer(control: Control, peer: PeerId) -> mpsc::Sender<Outgoing> {
    let (tx, rx) = mpsc::channel(OUTBOX_MESSAGES);
    tokio::spawn(write_loop(control, peer, rx));
    tx
}

/// Encodes `messages` as consecutive frames.
pub fn frames(messages: &[Outgoing]) -> Vec<u8> {
    let len = messages.iter().map(|m| 4 + m.len()).sum();
    let mut buffer = Vec::with_capacity(len);
    for message in messages {
        let n = u32::try_from(message.len()).expect("consensus messages are far below 4 GiB");
        buffer.extend_from_slice(&n.to_le_bytes());
        buffer.extend_from_slice(message);
    }
    buffer
}

async fn write_loop(mut control: Control, peer: PeerId, mut outbox: mpsc::Receiver<Outgoing>) {
    let mut stream: Option<Stream> = None;
    let mut batch = Vec::with_capacity(WRITE_BATCH_MESSAGES);
    while outbox.recv_many(&mut batch, WRITE_BATCH_MESSAGES).await > 0 {
        let buffer = frames(&batch);
        batch.clear();
        // A stream may have broken since the last write (the connection was replaced):
        // one more try, on a new stream.
        for attempt in 0..2 {
            if stream.is_none() {
                match tokio::time::timeout(IO_TIMEOUT, control.open_stream(peer, PROTOCOL)).await {
                    Ok(Ok(opened)) => stream = Some(opened),
                    Ok(Err(e)) => {
                        debug!(%peer, "cannot open a consensus stream: {e}");
                        break;
                    }
                    Err(_) => {
                        debug!(%peer, "opening a consensus stream timed out");
                        break;
                    }
                }
            }
            let Some(open) = stream.as_mut() else { break };
            let written = tokio::time::timeout(IO_TIMEOUT, async {
                open.write_all(&buffer).await?;
                open.flush().await
            })
            .await;
            match written {
                Ok(Ok(())) => break,
                Ok(Err(e)) => debug!(%peer, attempt, "consensus stream broke: {e}"),
                Err(_) => debug!(%peer, attempt, "consensus stream write timed out"),
            }
            stream = None;
        }
    }
}

/// Reads every inbound consensus stream, each in a task of its own, into `events`;
/// up to [`INBOUND_STREAMS_PER_PEER`] at once from any one peer.
pub async fn accept_loop(
    mut incoming: IncomingStreams,
    events: mpsc::Sender<NetEvent>,
    max_bytes: usize,
) {
    let slots = StreamSlots::new(INBOUND_STREAMS_PER_PEER);
    let budget = Arc::new(Semaphore::new(
        max_bytes
            .saturating_mul(4)
            .clamp(QUEUE_BYTES_MIN, Semaphore::MAX_PERMITS),
    ));
    // One warning a minute per peer, however fast it opens streams (only allowed peers
    // get this far, so the map stays as small as the network).
    let mut warned: HashMap<PeerId, std::time::Instant> = HashMap::new();
    while let Some((peer, stream)) = incoming.next().await {
        match slots.take(peer) {
            Some(slot) => {
                let events = events.clone();
                let budget = Arc::clone(&budget);
                tokio::spawn(async move {
                    read_loop(peer, stream, events, budget, max_bytes).await;
                    drop(slot);
                });
            }
            None => {
                let now = std::time::Instant::now();
                let due = warned
                    .get(&peer)
                    .is_none_or(|last| now.duration_since(*last) >= Duration::from_secs(60));
                if due {
                    warned.insert(peer, now);
                    tracing::warn!(
                        %peer,
                        "peer already has {INBOUND_STREAMS_PER_PEER} consensus streams open: another refused (warned once a minute)"
                    );
                } else {
                    debug!(%peer, "consensus stream refused: the peer holds its share");
                }
            }
        }
    }
}

/// Counts the inbound streams each peer holds open.
#[derive(Clone)]
struct StreamSlots {
    open: Arc<Mutex<HashMap<PeerId, usize>>>,
    per_peer: usize,
}

/// One open stream of `peer`; dropping it frees the slot.
struct StreamSlot {
    slots: StreamSlots,
    peer: PeerId,
}

impl StreamSlots {
    fn new(per_peer: usize) -> StreamSlots {
        StreamSlots {
            open: Arc::new(Mutex::new(HashMap::new())),
            per_peer,
        }
    }

    /// A slot for another stream of `peer`, unless it holds all of its own.
    fn take(&self, peer: PeerId) -> Option<StreamSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(peer).or_insert(0);
        if *count >= self.per_peer {
            return None;
        }
        *count += 1;
        Some(StreamSlot {
            slots: self.clone(),
            peer,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// Why a stream's reading ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// The stream closed or failed.
    Closed,
    /// A frame announced more bytes than allowed.
    Oversized(usize),
    /// The driver is gone.
    Stopped,
}

/// Reads frames from `io` until it ends, handing each message to `deliver` (which
/// returns false to stop).
pub async fn read_frames<R, F>(io: &mut R, max_bytes: usize, mut deliver: F) -> ReadEnd
where
    R: futures::AsyncRead + Unpin,
    F: FnMut(Vec<u8>) -> bool,
{
    loop {
        let mut len = [0u8; 4];
        if io.read_exact(&mut len).await.is_err() {
            return ReadEnd::Closed;
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > max_bytes {
            return ReadEnd::Oversized(len);
        }
        // The buffer grows with the bytes that arrive (doubling from
        // INITIAL_FRAME_CAPACITY, never past `len`), so a peer announcing large frames
        // on many streams holds about the memory it has actually sent.
        let mut message = Vec::new();
        while message.len() < len {
            let start = message.len();
            let end = len.min(start + start.max(INITIAL_FRAME_CAPACITY));
            message.reserve_exact(end - start);
            message.resize(end, 0);
            if io.read_exact(&mut message[start..]).await.is_err() {
                return ReadEnd::Closed;
            }
        }
        if !deliver(message) {
            return ReadEnd::Stopped;
        }
    }
}

async fn read_loop(
    peer: PeerId,
    mut stream: Stream,
    events: mpsc::Sender<NetEvent>,
    budget: Arc<Semaphore>,
    max_bytes: usize,
) {
    let end = read_frames(&mut stream, max_bytes, |bytes| {
        let Some(queued) = reserve(&budget, bytes.len()) else {
            debug!("consensus queue over its byte budget: message dropped");
            return true;
        };
        match events.try_send(NetEvent::Consensus {
            peer,
            bytes,
            queued,
        }) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                debug!("consensus queue full: message dropped");
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    })
    .await;
    if let ReadEnd::Oversized(len) = end {
        tracing::warn!(
            %peer,
            "consensus message of {len} bytes is over the limit of {max_bytes}: stream closed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8], max: usize) -> (Vec<Vec<u8>>, ReadEnd) {
        let mut got = Vec::new();
        let mut io = futures::io::Cursor::new(bytes.to_vec());
        let end = futures::executor::block_on(read_frames(&mut io, max, |m| {
            got.push(m);
            true
        }));
        (got, end)
    }

    #[test]
    fn queued_messages_hold_their_bytes_of_the_budget_until_dropped() {
        let budget = Arc::new(Semaphore::new(100));
        let first = reserve(&budget, 60).expect("60 of 100 free");
        assert!(reserve(&budget, 50).is_none(), "only 40 left");
        let small = reserve(&budget, 40).expect("exactly what is left");
        assert!(reserve(&budget, 1).is_none());
        drop(first);
        assert!(
            reserve(&budget, 50).is_some(),
            "the first message's bytes came back"
        );
        drop(small);
        assert!(
            reserve(&budget, usize::MAX).is_none(),
            "more than a u32 is refused"
        );
    }

    #[test]
    fn a_peer_holds_at_most_its_share_of_inbound_streams() {
        let slots = StreamSlots::new(2);
        let (a, b) = (PeerId::random(), PeerId::random());
        let first = slots.take(a).expect("a's first stream");
        let _second = slots.take(a).expect("a's second stream");
        assert!(slots.take(a).is_none(), "a's third stream is refused");
        let other = slots.take(b).expect("b has slots of its own");
        drop(first);
        assert!(slots.take(a).is_some(), "a closed one: room again");
        drop(other);
        assert!(
            !slots.open.lock().unwrap().contains_key(&b),
            "a peer with no streams is forgotten"
        );
    }

    #[test]
    fn frames_read_back_in_order_and_an_oversized_one_ends_the_stream() {
        let messages: Vec<Outgoing> = vec![
            Arc::new(b"pre-prepare".to_vec()),
            Arc::new(Vec::new()),
            Arc::new(vec![7; 300]),
        ];
        let encoded = frames(&messages);
        assert_eq!(encoded.len(), 3 * 4 + 11 + 300);
        let (got, end) = read_all(&encoded, 300);
        let want: Vec<Vec<u8>> = messages.iter().map(|m| m.to_vec()).collect();
        assert_eq!(got, want);
        assert_eq!(end, ReadEnd::Closed);
        // One byte over the limit: the frames before it arrive, nothing after.
        let (got, end) = read_all(&encoded, 299);
        assert_eq!(got, want[..2].to_vec());
        assert_eq!(end, ReadEnd::Oversized(300));
        // A frame cut short is not delivered.
        let (got, end) = read_all(&encoded[..encoded.len() - 1], 300);
        assert_eq!(got.len(), 2);
        assert_eq!(end, ReadEnd::Closed);
        // A frame announcing the limit, of which only a few bytes come, is not
        // delivered either.
        let mut long = (1u32 << 20).to_le_bytes().to_vec();
        long.extend_from_slice(&[1; 100]);
        let (got, end) = read_all(&long, 1 << 20);
        assert!(got.is_empty());
        assert_eq!(end, ReadEnd::Closed);
        // Frames at, just past and well past the buffer's first allocation arrive
        // whole, one after the other.
        let big: Vec<Outgoing> = [INITIAL_FRAME_CAPACITY, INITIAL_FRAME_CAPACITY + 1, 200_000]
            .iter()
            .map(|&n| Arc::new((0..n).map(|i| (i % 251) as u8).collect()))
            .collect();
        let (got, end) = read_all(&frames(&big), 1 << 20);
        let want: Vec<Vec<u8>> = big.iter().map(|m| m.to_vec()).collect();
        assert_eq!(got, want);
        // (read_to_end's doubling left frames of exactly a power of two at twice
        // their size)
        assert!(
            got.iter().all(|m| m.capacity() < 2 * m.len()),
            "no doubled slack kept"
        );
        assert_eq!(end, ReadEnd::Closed);
    }
}
