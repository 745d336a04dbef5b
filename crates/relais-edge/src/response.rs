//! What the edge sends to clients: one body type for every source (memory, file, growing fill,
//! origin passthrough), RFC 9211 `Cache-Status` values, and the edge's own error pages.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream};
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::accesslog::{Req, RequestText};
use crate::upstream::BoxError;

/// Largest frame sent from an in-memory body.
const FRAME: usize = 256 * 1024;

/// The `Cache-Status` cache name.
pub const CACHE_NAME: &str = "relais";
pub static CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

/// A response body from any source.
pub enum EdgeBody {
    Empty,
    /// A body in memory, sent in frames of at most `FRAME` bytes.
    Full(Option<Bytes>),
    Stream(BoxStream<'static, io::Result<Bytes>>),
    Upstream(Incoming),
    /// Another body, counted; its access-log line is written when it is finished or dropped.
    Logged(Recorded),
}

/// A recording in a heap slot that goes back to its thread's pool when the response ends, so
/// that recording a request allocates nothing: the slot is taken and returned in the same
/// handful of instructions, where a fresh allocation cost about 240 under mimalloc (a size
/// class no other per-request allocation uses, so its page empties and refills on every
/// request). The slot also keeps its [`RequestText`]'s buffer from one request to the next.
/// The option is `Some` from [`Recorded::take`] to `drop` (safe code cannot move a box out of
/// `&mut self` otherwise).
pub struct Recorded(Option<Box<Slot>>);

#[derive(Default)]
struct Slot {
    /// The request's side of its access-log line (filled before the request is handed on).
    request: RequestText,
    /// The rest, set once the response is ready; recorded when it ends.
    rec: Option<Logged>,
}

/// Slots kept per thread: more than the responses a worker has in flight at once in practice;
/// beyond it, slots are freed.
const POOLED: usize = 256;

thread_local! {
    // The boxes are the point: the pool keeps allocations, which are handed out and back.
    #[allow(clippy::vec_box)]
    static POOL: std::cell::RefCell<Vec<Box<Slot>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Recorded {
    /// An empty slot: nothing is recorded unless [`Recorded::start`] is called.
    pub fn take() -> Recorded {
        let slot = POOL.with(|p| p.try_borrow_mut().ok().and_then(|mut p| p.pop()));
        Recorded(Some(slot.unwrap_or_default()))
    }

    /// The request's side of the line, to fill.
    pub fn request_mut(&mut self) -> Option<&mut RequestText> {
        self.0.as_deref_mut().map(|s| &mut s.request)
    }

    /// Arms the slot: the request is recorded when the response ends (or is abandoned).
    pub fn start(&mut self, l: Logged) {
        if let Some(s) = self.0.as_deref_mut() {
            s.rec = Some(l);
        }
    }

    /// Records the request at once (its body is sent whole, see [`EdgeBody::whole_len`]); the
    /// slot goes back to its pool.
    pub fn record_now(
        self,
        s: &mut Summary,
        edge: &crate::proxy::Edge,
        site: &crate::proxy::SiteRuntime,
    ) {
        if let Some(slot) = self.0.as_deref() {
            s.record(edge, site, Req::Text(&slot.request));
        }
    }

    fn get(&self) -> Option<&Logged> {
        self.0.as_deref().and_then(|s| s.rec.as_ref())
    }

    fn get_mut(&mut self) -> Option<&mut Logged> {
        self.0.as_deref_mut().and_then(|s| s.rec.as_mut())
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        if let Some(mut slot) = self.0.take() {
            let Slot { request, rec } = &mut *slot;
            if let Some(l) = rec {
                l.summary.record(&l.edge, &l.site, Req::Text(request));
            }
            // Releases the body, the edge and the site; the request's buffer stays unless a long
            // request grew it.
            *rec = None;
            request.trim();
            // A thread that is exiting has no pool left: the slot is simply freed.
            let _ = POOL.try_with(|p| {
                if let Ok(mut p) = p.try_borrow_mut()
                    && p.len() < POOLED
                {
                    p.push(slot);
                }
            });
        }
    }
}

/// A body whose bytes are counted for the access log and statistics, which both record the
/// request when its response ends (or is abandoned).
pub struct Logged {
    pub inner: EdgeBody,
    pub summary: Summary,
    /// The edge (its clock and access log) and the site, held rather than their parts so that a
    /// request clones no shared counter of its own.
    pub edge: std::sync::Arc<crate::proxy::Edge>,
    pub site: std::sync::Arc<crate::proxy::SiteRuntime>,
}

/// What the access log and statistics record of a request, besides the request itself.
pub struct Summary {
    pub sent: u64,
    /// When the request was taken in hand, in [`crate::clock::coarse_millis`] (`None`: it was
    /// answered in the poll that took it, its time taken is 0).
    pub started_ms: Option<u64>,
    pub ip: std::net::IpAddr,
    pub status: u16,
    /// Statistics' view of the request (`None` when they are off): what `sent` completes.
    pub stat: Option<crate::stats::Request>,
}

impl Summary {
    /// Writes the request's access-log line (if the edge has a log) and counts it in its
    /// site's statistics (if they are on).
    pub fn record(
        &mut self,
        edge: &crate::proxy::Edge,
        site: &crate::proxy::SiteRuntime,
        request: Req<'_>,
    ) {
        // The tick clock: lines are stamped to the second and minutes are minutes.
        let at_us = edge.clock().recent_micros();
        if let Some(log) = &edge.access_log {
            let opts = site.site.log;
            let entry = crate::accesslog::Entry {
                opts,
                ip: self.ip,
                request,
                status: self.status,
                bytes: self.sent,
                // Only W3C lines carry the time taken.
                micros: if opts.format == crate::accesslog::LogFormat::W3c {
                    self.started_ms.map_or(0, |t| {
                        crate::clock::coarse_millis().saturating_sub(t) * 1000
                    })
                } else {
                    0
                },
            };
            // The time goes as `at_us` (converted once for the line and the minute).
            log.log_at(&site.log_name, &entry, at_us);
        }
        if let Some(r) = &mut self.stat {
            r.sent = self.sent;
            let minute = (at_us / 60_000_000) as i64;
            site.metrics.minutes.record(minute, r);
        }
    }
}

impl EdgeBody {
    /// The length of a body held in memory that goes in one frame (none, or at most 256 KiB,
    /// the frame size): hyper takes it whole the first time it polls the body, right after the
    /// head, so the request can be recorded as soon as the response is ready, with the body's
    /// length, without wrapping the body to count it. `None` for a body sent over time.
    pub fn whole_len(&self) -> Option<u64> {
        match self {
            EdgeBody::Empty | EdgeBody::Full(None) => Some(0),
            EdgeBody::Full(Some(b)) if b.len() <= FRAME => Some(b.len() as u64),
            _ => None,
        }
    }
}

impl Body for EdgeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            EdgeBody::Empty => Poll::Ready(None),
            EdgeBody::Full(slot) => {
                let Some(mut b) = slot.take() else {
                    return Poll::Ready(None);
                };
                if b.len() > FRAME {
                    let first = b.split_to(FRAME);
                    *slot = Some(b);
                    return Poll::Ready(Some(Ok(Frame::data(first))));
                }
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            EdgeBody::Stream(s) => match Pin::new(s).poll_next(cx) {
                Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            EdgeBody::Upstream(b) => match Pin::new(b).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            EdgeBody::Logged(l) => {
                let Some(l) = l.get_mut() else {
                    return Poll::Ready(None);
                };
                let r = Pin::new(&mut l.inner).poll_frame(cx);
                if let Poll::Ready(Some(Ok(f))) = &r
                    && let Some(d) = f.data_ref()
                {
                    l.summary.sent += d.len() as u64;
                }
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            EdgeBody::Empty => true,
            EdgeBody::Full(b) => b.is_none(),
            EdgeBody::Stream(_) => false,
            EdgeBody::Upstream(b) => b.is_end_stream(),
            EdgeBody::Logged(l) => l.get().is_none_or(|l| l.inner.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            EdgeBody::Empty => SizeHint::with_exact(0),
            EdgeBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            EdgeBody::Stream(_) => SizeHint::default(),
            EdgeBody::Upstream(b) => b.size_hint(),
            EdgeBody::Logged(l) => l
                .get()
                .map_or(SizeHint::with_exact(0), |l| l.inner.size_hint()),
        }
    }
}

/// Builds a `Cache-Status` member: `relais; hit; ttl=30`.
pub fn cache_status(params: &[&str]) -> HeaderValue {
    let mut s = String::with_capacity(48);
    s.push_str(CACHE_NAME);
    for p in params {
        s.push_str("; ");
        s.push_str(p);
    }
    HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("relais"))
}

/// An edge-generated error page: short, bilingual, no internals.
pub fn error_page(
    status: StatusCode,
    fr: &str,
    en: &str,
    cache_status_params: &[&str],
) -> Response<EdgeBody> {
    let body = format!(
        "<!doctype html>\n<html lang=\"fr\"><head><meta charset=\"utf-8\"><title>{code} — Relais</title></head>\n\
         <body><main><h1>{code} — {fr}</h1>\n<p lang=\"en\">{en}</p></main></body></html>\n",
        code = status.as_u16(),
    );
    let mut resp = Response::new(EdgeBody::Full(Some(Bytes::from(body))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(CACHE_STATUS.clone(), cache_status(cache_status_params));
    resp
}
