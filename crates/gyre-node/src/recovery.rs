//! Recovery arithmetic: which history read a subscription needs, whether
//! what came back recovers the client's position, and how publications
//! buffered while subscribing merge behind it.
//!
//! Pure: no engine, no clock. The rule that makes it worth a module: loss is
//! never silent. `recovered: true` only when every offset from the client's
//! position to the stream top is handed over, on the same stream epoch; an
//! empty client epoch matches nothing (a client that never saw an epoch
//! cannot prove it is on the current stream, e.g. across a stream reset that
//! restarted the offsets).

use std::sync::Arc;

use gyre_proto::protocol::Publication;

use crate::engine::{HistoryQuery, StreamPosition};
use crate::policy::SubPlan;

/// The history read a stateful subscription makes before going live; every
/// one may create the stream (its epoch is what the client keeps).
/// `cache`: only the latest publication matters (cache recovery mode).
pub fn subscribe_query(plan: &SubPlan, limit: usize) -> (HistoryQuery, bool) {
    let cache = plan.cache_mode && (plan.recover.is_some() || plan.auto_cache);
    let q = if cache {
        HistoryQuery { limit: Some(1), reverse: true, ..Default::default() }
    } else if let Some(since) = &plan.recover {
        HistoryQuery { since: Some(since.offset), limit: Some(limit + 1), ..Default::default() }
    } else {
        HistoryQuery { limit: Some(0), ..Default::default() }
    };
    (HistoryQuery { ensure_stream: true, ..q }, cache)
}

/// What a subscription's history read gives the client.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// The client asked to recover.
    pub was_recovering: bool,
    /// Its position was recovered completely.
    pub recovered: bool,
    /// Publications for the subscribe result.
    pub publications: Vec<Publication>,
    /// Offset for the result (the client's position when recovered, else the top).
    pub offset: u64,
    /// Publications buffered while subscribing go into the result too (not after it).
    pub append_to_result: bool,
}

/// The client's epoch is the stream's. Empty never matches.
pub fn same_epoch(client: &str, stream: &str) -> bool {
    !client.is_empty() && client == stream
}

/// Evaluates a history read. `limit` is `client.recovery_max_publication_limit`
/// (the read asked for one more, to tell "exactly limit" from "too many").
pub fn outcome(
    recover: Option<&StreamPosition>,
    cache: bool,
    limit: usize,
    pubs: Vec<Publication>,
    top: &StreamPosition,
) -> Outcome {
    let mut out = Outcome { offset: top.offset, ..Default::default() };
    if cache {
        let latest = pubs.into_iter().next();
        if let Some(since) = recover {
            out.was_recovering = true;
            let at_top = same_epoch(&since.epoch, &top.epoch) && since.offset == top.offset;
            out.recovered = match &latest {
                // The latest publication is the whole state in cache mode:
                // handing it over recovers, whatever epoch the client had.
                Some(l) => l.offset == top.offset,
                None => at_top,
            };
            if !at_top {
                out.publications.extend(latest);
            }
        } else {
            out.publications.extend(latest);
        }
        out.append_to_result = true;
    } else if let Some(since) = recover {
        out.was_recovering = true;
        let complete = same_epoch(&since.epoch, &top.epoch)
            && since.offset <= top.offset
            && pubs.len() <= limit
            && match (pubs.first(), pubs.last()) {
                (Some(f), Some(l)) => {
                    f.offset == since.offset + 1
                        && l.offset == top.offset
                        && pubs.windows(2).all(|w| w[0].offset + 1 == w[1].offset)
                }
                _ => since.offset == top.offset,
            };
        if complete {
            out.recovered = true;
            out.offset = since.offset;
            out.publications = pubs;
            out.append_to_result = true;
        }
    }
    out
}

/// Publications that arrived while subscribing, after the history read.
#[derive(Debug, Default)]
pub struct Merged {
    /// To deliver, in offset order (tags filter applied).
    pub extra: Vec<Arc<Publication>>,
    /// The last offset seen (delivered or filtered out).
    pub last: u64,
    /// The last offset delivered, if any of `extra`.
    pub delivered: Option<u64>,
    /// An offset was missing: the subscription must end with insufficient state.
    pub gap: bool,
}

/// Merges buffered publications behind position `last`: duplicates of the
/// history read are skipped, a missing offset stops the merge with `gap`.
pub fn merge_buffered(last: u64, buffered: Vec<Arc<Publication>>, keep: impl Fn(&Publication) -> bool) -> Merged {
    let mut m = Merged { last, ..Default::default() };
    for p in buffered {
        if p.offset <= m.last {
            continue; // already part of the history read
        }
        if p.offset != m.last + 1 {
            m.gap = true;
            break;
        }
        m.last = p.offset;
        if keep(&p) {
            m.delivered = Some(p.offset);
            m.extra.push(p);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(offset: u64) -> Publication {
        Publication { offset, ..Default::default() }
    }

    fn pos(offset: u64, epoch: &str) -> StreamPosition {
        StreamPosition { offset, epoch: epoch.into() }
    }

    #[test]
    fn stream_recovery_table() {
        // (client position, history after it, top) -> (recovered, offset, publications)
        type Row = (StreamPosition, Vec<u64>, StreamPosition, (bool, u64, usize));
        let rows: Vec<Row> = vec![
            (pos(3, "e"), vec![4, 5], pos(5, "e"), (true, 3, 2)),
            (pos(5, "e"), vec![], pos(5, "e"), (true, 5, 0)),
            // Another epoch: the stream was reset.
            (pos(3, "old"), vec![4, 5], pos(5, "e"), (false, 5, 0)),
            // An empty client epoch never matches, even at the same offsets.
            (pos(3, ""), vec![4, 5], pos(5, "e"), (false, 5, 0)),
            (pos(0, ""), vec![], pos(0, "e"), (false, 0, 0)),
            // A hole (4 expired) and a client ahead of the top.
            (pos(3, "e"), vec![5], pos(5, "e"), (false, 5, 0)),
            (pos(9, "e"), vec![], pos(5, "e"), (false, 5, 0)),
            // More than the limit (3): not recovered.
            (pos(1, "e"), vec![2, 3, 4, 5], pos(5, "e"), (false, 5, 0)),
            (pos(2, "e"), vec![3, 4, 5], pos(5, "e"), (true, 2, 3)),
            // Gap inside the list.
            (pos(2, "e"), vec![3, 5], pos(5, "e"), (false, 5, 0)),
        ];
        for (i, (since, hist, top, want)) in rows.into_iter().enumerate() {
            let pubs = hist.into_iter().map(p).collect();
            let o = outcome(Some(&since), false, 3, pubs, &top);
            assert!(o.was_recovering, "row {i}");
            assert_eq!((o.recovered, o.offset, o.publications.len()), want, "row {i}");
            assert_eq!(o.append_to_result, o.recovered, "row {i}");
        }
    }

    #[test]
    fn cache_recovery_table() {
        // (client position, latest, top) -> (recovered, publications)
        type Row = (Option<StreamPosition>, Option<u64>, StreamPosition, (bool, usize));
        let rows: Vec<Row> = vec![
            (Some(pos(5, "e")), Some(5), pos(5, "e"), (true, 0)),
            (Some(pos(3, "e")), Some(5), pos(5, "e"), (true, 1)),
            (Some(pos(3, "x")), Some(5), pos(5, "e"), (true, 1)),
            (Some(pos(3, "")), Some(5), pos(5, "e"), (true, 1)),
            // The latest publication expired (not the top): the state is lost.
            (Some(pos(3, "e")), Some(4), pos(5, "e"), (false, 1)),
            // Nothing stored, client claims the top with no epoch: unproven.
            (Some(pos(5, "")), None, pos(5, "e"), (false, 0)),
            (Some(pos(0, "")), None, pos(0, "e"), (false, 0)),
            (Some(pos(5, "e")), None, pos(5, "e"), (true, 0)),
            (None, Some(5), pos(5, "e"), (false, 1)),
        ];
        for (i, (since, latest, top, want)) in rows.into_iter().enumerate() {
            let o = outcome(since.as_ref(), true, 3, latest.into_iter().map(p).collect(), &top);
            assert_eq!((o.recovered, o.publications.len()), want, "row {i}");
            assert!(o.append_to_result);
        }
    }

    #[test]
    fn merge_skips_duplicates_and_stops_at_a_gap() {
        let arc = |v: &[u64]| v.iter().map(|&o| Arc::new(p(o))).collect::<Vec<_>>();
        let m = merge_buffered(5, arc(&[4, 5, 6, 7]), |_| true);
        assert_eq!((m.extra.len(), m.last, m.delivered, m.gap), (2, 7, Some(7), false));
        let m = merge_buffered(5, arc(&[6, 8]), |_| true);
        assert_eq!((m.extra.len(), m.last, m.gap), (1, 6, true));
        let m = merge_buffered(5, arc(&[6, 7]), |p| p.offset != 7);
        assert_eq!((m.extra.len(), m.last, m.delivered), (1, 7, Some(6)));
    }

    #[test]
    fn subscribe_queries_create_the_stream() {
        let plan = SubPlan { recover: Some(pos(3, "e")), recoverable: true, ..Default::default() };
        let (q, cache) = subscribe_query(&plan, 10);
        assert_eq!((q.since, q.limit, q.ensure_stream, cache), (Some(3), Some(11), true, false));
        let (q, _) = subscribe_query(&SubPlan::default(), 10);
        assert_eq!((q.limit, q.ensure_stream), (Some(0), true));
    }
}
