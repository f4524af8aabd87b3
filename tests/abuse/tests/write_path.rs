//! Issue 13: a publication's WebSocket frame is built once and written
//! straight to each idle subscriber's socket by the broadcaster
//! (write-through); a subscriber whose socket is not idle gets it through its
//! queue and its own task. Two writers per socket is what could break here:
//! order (a write-through overtaking frames still queued or being written),
//! torn frames (the rest of a partly written frame after something else),
//! and the slow-client rule (its queue over the limit → 3008, nobody else
//! waits).
//!
//! Shown with real clients on the real binary: concurrent publishers over
//! the HTTP API, readers that keep up (each must receive every publication,
//! all in one and the same order, each publisher's own in the order it sent
//! them), and one reader with a tiny receive buffer that reads nothing until
//! the publishers are done: it must read whole frames that are a prefix of
//! that same order and then a Close frame with 3008.

use std::sync::Arc;
use std::time::Duration;

use gyre_abuse::{Event, Gyre, Ws, user_token};
use serde_json::{Value, json};

const READERS: usize = 6;
const PUBLISHERS: u64 = 4;
const PER_PUBLISHER: u64 = 2000;
const PAD: usize = 1000;

async fn subscribed(ws: &mut Ws, user: &str) {
    let r = ws.call(1, json!({"connect": {"token": user_token(user)}})).await;
    assert!(r["connect"]["client"].is_string(), "{r}");
    let r = ws.call(2, json!({"subscribe": {"channel": "order"}})).await;
    assert!(r.get("error").is_none(), "{r}");
}

/// `(publisher, n)` of each publication push in `msgs`.
fn pubs(msgs: Vec<Value>) -> impl Iterator<Item = (u64, u64)> {
    msgs.into_iter().filter_map(|m| {
        let d = &m["push"]["pub"]["data"];
        Some((d["p"].as_u64()?, d["n"].as_u64()?))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_reach_every_reader_in_one_order_while_a_slow_reader_gets_3008() {
    // A long write timeout: the slow reader only starts reading after the
    // publishers finish, and its Close frame must still get through.
    let g = Arc::new(Gyre::start(json!({"websocket": {"write_timeout": "60s"}})).await);
    let total = (PUBLISHERS * PER_PUBLISHER) as usize;

    let mut readers = Vec::new();
    for i in 0..READERS {
        let mut ws = Ws::open(&g.ws_url()).await;
        subscribed(&mut ws, &format!("reader-{i}")).await;
        readers.push(tokio::spawn(async move {
            let mut seq = Vec::with_capacity(total);
            while seq.len() < total {
                match ws.next_within(Duration::from_secs(60)).await {
                    Some(Event::Json(msgs)) => seq.extend(pubs(msgs)),
                    other => panic!("reader {i}: {other:?} after {} publications", seq.len()),
                }
            }
            seq
        }));
    }
    // 4 KiB asked for (the kernel doubles it): the server's socket buffer
    // and then its 1 MiB queue fill long before the publishers finish.
    let mut slow = Ws::open_with_recv_buffer(&g.ws_url(), 4096).await;
    subscribed(&mut slow, "slow").await;

    let pad = "x".repeat(PAD);
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (g, pad) = (g.clone(), pad.clone());
            tokio::spawn(async move {
                for n in 0..PER_PUBLISHER {
                    let (status, r) =
                        g.api("publish", json!({"channel": "order", "data": {"p": p, "n": n, "pad": pad}})).await;
                    assert!(status == 200 && r.get("error").is_none(), "publisher {p} #{n}: {status} {r}");
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.expect("publisher");
    }

    let mut seqs = Vec::new();
    for r in readers {
        seqs.push(r.await.expect("reader"));
    }
    let order = &seqs[0];
    assert_eq!(order.len(), total);
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(s, order, "reader {i} saw another order than reader 0");
    }
    let mut next = vec![0u64; PUBLISHERS as usize];
    for &(p, n) in order {
        assert_eq!(n, next[p as usize], "publisher {p}'s publications out of order");
        next[p as usize] += 1;
    }

    // The slow reader: whole frames (tungstenite refuses a torn one), a
    // prefix of the common order, then 3008.
    let mut got = Vec::new();
    let close = loop {
        match slow.next_within(Duration::from_secs(60)).await {
            Some(Event::Json(msgs)) => got.extend(pubs(msgs)),
            Some(Event::Close(code, reason)) => break (code, reason),
            other => panic!("slow reader: {other:?} after {} publications", got.len()),
        }
    };
    assert_eq!(close.0, 3008, "slow reader closed with {close:?} after {} publications", got.len());
    assert!(got.len() < total, "the slow reader got everything: nothing was slow");
    assert_eq!(got[..], order[..got.len()], "the slow reader's publications are not a prefix of the common order");
}
