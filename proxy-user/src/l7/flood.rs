//! HTTP/2 flood limits on downstream connections: a byte-stream inspector between the socket and
//! hyper that reads every inbound frame header (never a payload) and trips when a client makes the
//! proxy work without asking for anything useful. hyper and h2 bound what they can (concurrent
//! streams, pending-accept resets, locally reset streams, header list size); these rules cover the
//! rest, with Envoy's defaults where it has one:
//!
//! | attack | rule |
//! |---|---|
//! | Rapid Reset (CVE-2023-44487) | the client resets ≥ half of its streams within 1 s of opening them, after ≥ [`PREMATURE_RESET_MIN_STREAMS`] streams (Envoy's `premature_reset_*`) |
//! | empty frames | more than [`MAX_CONSECUTIVE_EMPTY_FRAMES`] consecutive DATA without END_STREAM or HEADERS/CONTINUATION with no payload (Envoy: 1) |
//! | CONTINUATION flood | more than [`MAX_CONTINUATIONS`] CONTINUATION frames in one header block |
//! | PING / SETTINGS flood | frames the proxy must acknowledge beyond a burst of [`CONTROL_BURST`] and [`CONTROL_PER_SECOND`] per second (Envoy bounds its queue of outbound control frames at 1,000) |
//! | WINDOW_UPDATE flood | more than [`WINDOW_UPDATE_BURST`] plus one per KiB the proxy wrote (Envoy: 10 per DATA frame sent) |
//! | PRIORITY flood | more than [`PRIORITY_PER_STREAM`] per stream opened (Envoy: 100) |
//!
//! A tripped connection stops being read; the server then sends GOAWAY and closes the connection
//! (see `l7::serve`). Connections that do not start with the HTTP/2 preface pass through untouched.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Streams a client must have opened before the premature-reset ratio is judged (Envoy's
/// `overload.premature_reset_total_stream_count`).
pub const PREMATURE_RESET_MIN_STREAMS: u64 = 500;
/// A reset within this long of opening the stream is premature (Envoy's
/// `overload.premature_reset_min_stream_lifetime_seconds`).
pub const PREMATURE_RESET_LIFETIME: Duration = Duration::from_secs(1);
/// Envoy's `max_consecutive_inbound_frames_with_empty_payload`.
pub const MAX_CONSECUTIVE_EMPTY_FRAMES: u32 = 1;
/// CONTINUATION frames allowed in one header block (64 frames of 16 KiB exceed any header list a
/// server accepts; a client sending tiny ones is only making work).
pub const MAX_CONTINUATIONS: u32 = 64;
/// PING/SETTINGS frames needing an acknowledgement, as a burst...
pub const CONTROL_BURST: f64 = 1000.0;
/// ...refilled at this rate (a keep-alive pinger sends one every few seconds).
pub const CONTROL_PER_SECOND: f64 = 100.0;
/// WINDOW_UPDATE frames allowed before any response data was written.
pub const WINDOW_UPDATE_BURST: u64 = 1000;
/// PRIORITY frames per stream opened (Envoy's `max_inbound_priority_frames_per_stream`).
pub const PRIORITY_PER_STREAM: u64 = 100;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// Recent stream opens remembered for the premature-reset rule.
const RECENT_OPENS: usize = 1024;

/// Which rule a connection broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    RapidReset,
    EmptyFrames,
    Continuation,
    Control,
    WindowUpdate,
    Priority,
}

/// Tells the serving task that the connection broke a rule.
#[derive(Debug, Default)]
pub struct Tripwire {
    tripped: AtomicBool,
    notify: Notify,
}

impl Tripwire {
    /// Whether a rule was broken.
    pub fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Acquire)
    }

    /// Completes once a rule is broken.
    pub async fn wait(&self) {
        let notified = self.notify.notified();
        if self.tripped() {
            return;
        }
        notified.await;
    }

    fn trip(&self) {
        self.tripped.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// Where the inspector is in the byte stream.
#[derive(Debug)]
enum Phase {
    /// Matching the client preface; this many bytes matched so far.
    Preface(usize),
    /// HTTP/2 frames.
    Frames,
    /// Not HTTP/2: bytes pass uninspected.
    Other,
}

/// The frame-counting state of one connection (pure: fed bytes, says when a rule breaks).
#[derive(Debug)]
pub struct Inspector {
    phase: Phase,
    header: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to skip.
    skip: usize,
    empty_run: u32,
    continuations: u32,
    control_tokens: f64,
    control_at: Instant,
    window_updates: u64,
    written: u64,
    priorities: u64,
    streams: u64,
    premature: u64,
    last_stream: u32,
    recent: VecDeque<(u32, Instant)>,
    /// Frames seen (for figures and logs).
    pub frames: u64,
}

impl Default for Inspector {
    fn default() -> Inspector {
        Inspector {
            phase: Phase::Preface(0),
            header: [0; 9],
            have: 0,
            skip: 0,
            empty_run: 0,
            continuations: 0,
            control_tokens: CONTROL_BURST,
            control_at: Instant::now(),
            window_updates: 0,
            written: 0,
            priorities: 0,
            streams: 0,
            premature: 0,
            last_stream: 0,
            recent: VecDeque::new(),
            frames: 0,
        }
    }
}

impl Inspector {
    /// Feed bytes the client sent; `Err` names the first rule broken.
    pub fn inbound(&mut self, mut bytes: &[u8]) -> Result<(), Flood> {
        while !bytes.is_empty() {
            match self.phase {
                Phase::Other => return Ok(()),
                Phase::Preface(matched) => {
                    let n = (PREFACE.len() - matched).min(bytes.len());
                    if bytes[..n] != PREFACE[matched..matched + n] {
                        self.phase = Phase::Other;
                        return Ok(());
                    }
                    bytes = &bytes[n..];
                    self.phase = if matched + n == PREFACE.len() {
                        Phase::Frames
                    } else {
                        Phase::Preface(matched + n)
                    };
                }
                Phase::Frames => {
                    if self.skip > 0 {
                        let n = self.skip.min(bytes.len());
                        self.skip -= n;
                        bytes = &bytes[n..];
                        continue;
                    }
                    let n = (9 - self.have).min(bytes.len());
                    self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                    self.have += n;
                    bytes = &bytes[n..];
                    if self.have == 9 {
                        self.have = 0;
                        let h = self.header;
                        let len =
                            usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                        self.skip = len;
                        self.frame(h[3], h[4], len, stream)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Count bytes the proxy wrote (they earn the client WINDOW_UPDATE allowance).
    pub fn outbound(&mut self, n: usize) {
        self.written = self.written.saturating_add(n as u64);
    }

    fn frame(&mut self, kind: u8, flags: u8, len: usize, stream: u32) -> Result<(), Flood> {
        self.frames += 1;
        let empty = len == 0
            && match kind {
                DATA => flags & END_STREAM == 0,
                HEADERS | CONTINUATION => flags & END_HEADERS == 0,
                _ => false,
            };
        if empty {
            self.empty_run += 1;
            if self.empty_run > MAX_CONSECUTIVE_EMPTY_FRAMES {
                return Err(Flood::EmptyFrames);
            }
        } else if len > 0 {
            self.empty_run = 0;
        }
        match kind {
            HEADERS => {
                self.continuations = 0;
                if stream > self.last_stream {
                    self.last_stream = stream;
                    self.streams += 1;
                    if self.recent.len() == RECENT_OPENS {
                        self.recent.pop_front();
                    }
                    self.recent.push_back((stream, Instant::now()));
                }
            }
            CONTINUATION => {
                self.continuations += 1;
                if self.continuations > MAX_CONTINUATIONS {
                    return Err(Flood::Continuation);
                }
            }
            RST_STREAM => self.reset(stream)?,
            PING | SETTINGS if flags & ACK == 0 => {
                let now = Instant::now();
                let refill = now.duration_since(self.control_at).as_secs_f64() * CONTROL_PER_SECOND;
                self.control_at = now;
                self.control_tokens = (self.control_tokens + refill).min(CONTROL_BURST) - 1.0;
                if self.control_tokens < 0.0 {
                    return Err(Flood::Control);
                }
            }
            WINDOW_UPDATE => {
                self.window_updates += 1;
                if self.window_updates > WINDOW_UPDATE_BURST + self.written / 1024 {
                    return Err(Flood::WindowUpdate);
                }
            }
            PRIORITY => {
                self.priorities += 1;
                if self.priorities > PRIORITY_PER_STREAM * (self.streams + 1) {
                    return Err(Flood::Priority);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn reset(&mut self, stream: u32) -> Result<(), Flood> {
        let now = Instant::now();
        if let Ok(i) = self.recent.binary_search_by_key(&stream, |(s, _)| *s) {
            if let Some((_, opened)) = self.recent.remove(i) {
                if now.duration_since(opened) < PREMATURE_RESET_LIFETIME {
                    self.premature += 1;
                }
            }
        }
        if self.streams >= PREMATURE_RESET_MIN_STREAMS && self.premature * 2 >= self.streams {
            return Err(Flood::RapidReset);
        }
        Ok(())
    }
}

/// The socket as hyper sees it, inspected.
pub struct Guarded<I> {
    io: I,
    inspector: Inspector,
    tripwire: Arc<Tripwire>,
    on_trip: Option<Box<dyn FnOnce(Flood, u64) + Send>>,
}

impl<I> Guarded<I> {
    /// Inspect `io`; `on_trip` runs once with the rule and the frames seen.
    pub fn new(
        io: I,
        tripwire: Arc<Tripwire>,
        on_trip: Box<dyn FnOnce(Flood, u64) + Send>,
    ) -> Guarded<I> {
        Guarded {
            io,
            inspector: Inspector::default(),
            tripwire,
            on_trip: Some(on_trip),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.tripwire.tripped() {
            // Nothing more is read from a flooding client; the server's GOAWAY and its deadline
            // end the connection.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if let Err(flood) = this.inspector.inbound(&buf.filled()[before..]) {
                this.tripwire.trip();
                if let Some(report) = this.on_trip.take() {
                    report(flood, this.inspector.frames);
                }
            }
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guarded<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.inspector.outbound(n);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.inspector.outbound(n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn started() -> Inspector {
        let mut i = Inspector::default();
        assert_eq!(i.inbound(PREFACE), Ok(()));
        assert_eq!(i.inbound(&frame(SETTINGS, 0, 0, &[])), Ok(()));
        i
    }

    /// Feeds `frames` one byte at a time (the parser must not care how reads split).
    fn feed(i: &mut Inspector, frames: &[Vec<u8>]) -> Result<(), Flood> {
        for f in frames {
            for b in f {
                i.inbound(std::slice::from_ref(b))?;
            }
        }
        Ok(())
    }

    #[test]
    fn http1_passes_uninspected() {
        let mut i = Inspector::default();
        let ping = frame(PING, 0, 0, &[0; 8]);
        assert_eq!(i.inbound(b"GET / HTTP/1.1\r\n"), Ok(()));
        for _ in 0..5000 {
            assert_eq!(i.inbound(&ping), Ok(()));
        }
        assert_eq!(i.frames, 0);
    }

    #[test]
    fn rapid_reset_trips_after_the_minimum_streams() {
        let mut i = started();
        let mut stream = 1;
        let result = loop {
            let r = feed(
                &mut i,
                &[
                    frame(HEADERS, END_HEADERS, stream, &[0x82]),
                    frame(RST_STREAM, 0, stream, &[0, 0, 0, 8]),
                ],
            );
            if r.is_err() || stream > 10_000 {
                break r;
            }
            stream += 2;
        };
        assert_eq!(result, Err(Flood::RapidReset));
        assert_eq!(i.streams, PREMATURE_RESET_MIN_STREAMS);
    }

    #[test]
    fn normal_streams_and_occasional_cancels_pass() {
        let mut i = started();
        for n in 0..3000u32 {
            let stream = 2 * n + 1;
            let mut frames = vec![
                frame(HEADERS, END_HEADERS, stream, &[0x82]),
                frame(DATA, END_STREAM, stream, b"hello"),
            ];
            if n % 4 == 0 {
                frames.push(frame(RST_STREAM, 0, stream, &[0, 0, 0, 8]));
            }
            assert_eq!(feed(&mut i, &frames), Ok(()), "stream {stream}");
        }
    }

    #[test]
    fn empty_data_frames_trip_on_the_second() {
        let mut i = started();
        assert_eq!(i.inbound(&frame(HEADERS, END_HEADERS, 1, &[0x83])), Ok(()));
        assert_eq!(i.inbound(&frame(DATA, 0, 1, &[])), Ok(()));
        assert_eq!(i.inbound(&frame(DATA, 0, 1, b"x")), Ok(()));
        assert_eq!(i.inbound(&frame(DATA, 0, 1, &[])), Ok(()));
        assert_eq!(i.inbound(&frame(DATA, 0, 1, &[])), Err(Flood::EmptyFrames));
        // An empty DATA that ends the stream is normal.
        let mut i = started();
        for s in 0..100u32 {
            assert_eq!(i.inbound(&frame(DATA, END_STREAM, 2 * s + 1, &[])), Ok(()));
        }
    }

    #[test]
    fn continuation_flood_trips() {
        let mut i = started();
        assert_eq!(i.inbound(&frame(HEADERS, 0, 1, &[0x82])), Ok(()));
        let mut result = Ok(());
        for _ in 0..1000 {
            result = i.inbound(&frame(CONTINUATION, 0, 1, b"\x40\x01a\x01b"));
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(Flood::Continuation));
        assert_eq!(i.frames, 2 + 1 + u64::from(MAX_CONTINUATIONS));
    }

    #[test]
    fn ping_and_settings_floods_trip_acks_do_not() {
        for kind in [PING, SETTINGS] {
            let mut i = started();
            let payload: &[u8] = if kind == PING { &[0; 8] } else { &[] };
            let sent = (0..100_000)
                .take_while(|_| i.inbound(&frame(kind, 0, 0, payload)).is_ok())
                .count();
            assert!((999..1100).contains(&sent), "{kind}: {sent} frames passed");
            let mut i = started();
            for _ in 0..10_000 {
                assert_eq!(i.inbound(&frame(kind, ACK, 0, payload)), Ok(()));
            }
        }
    }

    #[test]
    fn window_updates_are_allowed_by_what_was_written() {
        let mut i = started();
        let wu = frame(WINDOW_UPDATE, 0, 0, &[0, 0, 0x40, 0]);
        for _ in 0..WINDOW_UPDATE_BURST {
            assert_eq!(i.inbound(&wu), Ok(()));
        }
        assert_eq!(i.inbound(&wu), Err(Flood::WindowUpdate));
        let mut i = started();
        i.outbound(10 << 20);
        for _ in 0..5000 {
            assert_eq!(i.inbound(&wu), Ok(()));
        }
    }
}
