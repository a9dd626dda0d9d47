//! Watches: a chunked stream of one JSON event per line, as the real API
//! server's watch cache sends them (initial events, changes after a
//! resourceVersion, BOOKMARKs, 410 `Expired` after compaction, the timeout,
//! a cut connection).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{base_response, selectors, Query, ResBody, Shared, Target};
use crate::resource::ResourceDef;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{self, ApiError};
use crate::store::{ChangeKind, Store};

/// Default watch duration when `timeoutSeconds` is absent (the real server's
/// `--min-request-timeout`).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// A body fed by a channel: each message becomes one HTTP/1.1 chunk.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// A BOOKMARK object: the type's zero value with only the resourceVersion set.
pub(crate) fn bookmark(res: &ResourceDef, revision: u64, initial_end: bool) -> Bytes {
    let mut obj = (res.zero)();
    obj["kind"] = json!(res.kind);
    obj["apiVersion"] = json!(res.api_version());
    obj["metadata"]["resourceVersion"] = json!(revision.to_string());
    if initial_end {
        obj["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line("BOOKMARK", &obj)
}

/// What a watch sees of the store.
struct WatchFilter {
    res: &'static ResourceDef,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl WatchFilter {
    fn matches(&self, obj: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| obj["metadata"]["namespace"] == ns)
            && self.labels.matches(obj)
            && self.fields.matches(obj)
    }

    /// Events for the changes after `*pos`, advancing `*pos` to the store's
    /// revision; `Err` with the 410 event when the history no longer reaches back.
    fn drain(&self, store: &Store, pos: &mut u64) -> Result<Vec<Bytes>, Bytes> {
        let changes = store
            .changes_after(*pos)
            .map_err(|h| event_line("ERROR", &status::too_old(*pos, h)))?;
        let mut out = Vec::new();
        for c in changes {
            if !std::ptr::eq(c.resource, self.res) {
                continue;
            }
            let now = self.matches(&c.object);
            let before = c.previous.as_ref().is_some_and(|p| self.matches(p));
            let event = match (c.kind, before, now) {
                (ChangeKind::Added, _, true) => Some(("ADDED", c.object.clone())),
                (ChangeKind::Modified, true, true) => Some(("MODIFIED", c.object.clone())),
                (ChangeKind::Modified, false, true) => Some(("ADDED", c.object.clone())),
                (ChangeKind::Modified, true, false) => {
                    // Leaving the selection: the previous state, at the new revision.
                    let mut prev = c.previous.clone().unwrap_or_default();
                    prev["metadata"]["resourceVersion"] = json!(c.revision.to_string());
                    Some(("DELETED", prev))
                }
                (ChangeKind::Deleted, true, _) => Some(("DELETED", c.object.clone())),
                _ => None,
            };
            if let Some((kind, obj)) = event {
                out.push(event_line(kind, &obj));
            }
        }
        *pos = store.revision();
        Ok(out)
    }
}

/// What a watch request asks for.
struct WatchOptions {
    /// `resourceVersion`: `None` for "" and "0".
    requested: Option<u64>,
    /// `sendInitialEvents`.
    send_initial: Option<bool>,
    /// `timeoutSeconds`.
    timeout: Duration,
    /// `allowWatchBookmarks`.
    bookmarks: bool,
}

impl WatchOptions {
    /// Reads and checks the query as the real server does.
    fn from_query(query: &Query) -> Result<WatchOptions, ApiError> {
        let send_initial = query
            .get("sendInitialEvents")
            .map(|v| v == "true" || v == "1");
        if send_initial == Some(true) {
            if query.get("resourceVersionMatch") != Some("NotOlderThan") {
                return Err(ApiError::Unprocessable(
                    "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan".into(),
                ));
            }
            if !query.flag("allowWatchBookmarks") {
                return Err(ApiError::Unprocessable(
                    "ListOptions.meta.k8s.io \"\" is invalid: allowWatchBookmarks: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true".into(),
                ));
            }
        }
        let requested =
            match query.get("resourceVersion").unwrap_or_default() {
                "" | "0" => None,
                other => Some(other.parse().map_err(|_| {
                    ApiError::BadRequest(format!("invalid resource version: {other}"))
                })?),
            };
        Ok(WatchOptions {
            requested,
            send_initial,
            timeout: query
                .get("timeoutSeconds")
                .and_then(|t| t.parse::<u64>().ok())
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_WATCH_TIMEOUT),
            bookmarks: query.flag("allowWatchBookmarks"),
        })
    }

    /// Whether the watch starts with the current state: synthetic ADDED
    /// events for rv ""/"0" (unless sendInitialEvents=false) or when
    /// sendInitialEvents=true.
    fn initial(&self) -> bool {
        self.send_initial.unwrap_or(self.requested.is_none())
    }
}

/// Starts a watch stream (HTTP 200, chunked, one event per line).
pub(crate) fn watch(
    shared: &Arc<Shared>,
    target: &Target,
    query: &Query,
) -> Result<Response<ResBody>, ApiError> {
    let (labels, mut fields) = selectors(target.res, query)?;
    if let Some(name) = &target.name {
        fields = FieldSelector::name(name);
    }
    let filter = WatchFilter {
        res: target.res,
        namespace: target.namespace.clone(),
        labels,
        fields,
    };
    let opts = WatchOptions::from_query(query)?;
    let (first, pos) = first_events(shared, &filter, &opts);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(stream(shared.clone(), filter, opts, first, pos, tx));
    Ok(base_response(StatusCode::OK)
        .body(BodyExt::boxed_unsync(ChannelBody(rx)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync())))
}

/// The events a watch starts with, and the revision it goes on from
/// (`u64::MAX`: it ends after them, with a 410 for a compacted revision).
fn first_events(shared: &Shared, filter: &WatchFilter, opts: &WatchOptions) -> (Vec<Bytes>, u64) {
    let store = shared.lock();
    let initial = opts.initial();
    match opts.requested {
        Some(r) if !initial && r < store.horizon() => (
            vec![event_line("ERROR", &status::too_old(r, store.horizon()))],
            u64::MAX,
        ),
        _ => {
            let mut first = Vec::new();
            let mut pos = store.revision();
            if let Some(r) = opts.requested.filter(|_| !initial) {
                pos = r.min(store.revision());
            }
            if initial {
                for obj in store
                    .list(filter.res)
                    .into_iter()
                    .filter(|o| filter.matches(o))
                {
                    first.push(event_line("ADDED", obj));
                }
                if opts.send_initial == Some(true) {
                    first.push(bookmark(filter.res, pos, true));
                }
            }
            (first, pos)
        }
    }
}

/// Sends a watch's events until its timeout, the client leaving, or a
/// cut: the first ones, then every change after `pos`, with bookmarks.
async fn stream(
    shared: Arc<Shared>,
    filter: WatchFilter,
    opts: WatchOptions,
    first: Vec<Bytes>,
    mut pos: u64,
    tx: mpsc::Sender<Bytes>,
) {
    let interval = shared.bookmark_interval;
    let mut cut = shared.cut.subscribe();
    let mut revisions = shared.revision.subscribe();
    for line in first {
        if tx.send(line).await.is_err() {
            return;
        }
    }
    if pos == u64::MAX {
        return;
    }
    // The real watch cache sends a last bookmark when the timeout comes.
    let deadline = Instant::now() + opts.timeout;
    let mut next_bookmark = Instant::now() + interval;
    loop {
        let batch = filter.drain(&shared.lock(), &mut pos);
        match batch {
            Ok(lines) => {
                for line in lines {
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
            }
            Err(expired) => {
                if tx.send(expired).await.is_err() {
                    tracing::debug!("watch client left before its 410 event");
                }
                return;
            }
        }
        tokio::select! {
            changed = revisions.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(next_bookmark.min(deadline)) => {
                if opts.bookmarks {
                    let batch = filter.drain(&shared.lock(), &mut pos);
                    let Ok(lines) = batch else { continue };
                    for line in lines {
                        if tx.send(line).await.is_err() {
                            return;
                        }
                    }
                    if tx.send(bookmark(filter.res, pos, false)).await.is_err() {
                        return;
                    }
                }
                if Instant::now() >= deadline {
                    return;
                }
                next_bookmark = Instant::now() + interval;
            }
            _ = cut.changed() => {
                // Keep the body open so the connection teardown, not a clean
                // end of stream, is what the client sees.
                tx.closed().await;
                return;
            }
        }
    }
}
