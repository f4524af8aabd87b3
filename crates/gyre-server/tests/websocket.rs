//! Raw-WebSocket tests against the real server on 127.0.0.1:0: framing in both
//! encodings, batching, every error path of the protocol, limits, slow
//! consumers and shutdown.

mod common;

use std::time::Duration;

use common::*;
use gyre_proto::ProtocolType;
use gyre_proto::protocol::{Command, ConnectRequest, PublishRequest, SubscribeRequest};
use serde_json::json;

#[tokio::test]
async fn json_connect_and_pipelined_subscribe_then_publication() {
    let s = TestServer::start(json!({})).await;
    let mut c = WsClient::connect(&s.ws_url()).await;
    // The SDK pipelines subscribes behind connect in one frame.
    c.send_text(&format!(
        "{}\n{}",
        json!({"id":1,"connect":{"token": user_token("42"), "name":"js"}}),
        json!({"id":2,"subscribe":{"channel":"news","flag":1}})
    ))
    .await;
    let msgs = c.json_until(|m| m["id"] == 2).await;
    assert_eq!(msgs[0]["id"], 1);
    let connect = &msgs[0]["connect"];
    assert!(connect["client"].as_str().unwrap().len() == 36);
    assert_eq!(connect["ping"], 25);
    assert_eq!(connect["pong"], true);
    assert_eq!(connect["expires"], true);
    // Empty results keep their key.
    assert_eq!(msgs[1], json!({"id":2,"subscribe":{}}));

    let (status, body) = s.api("publish", json!({"channel":"news","data":{"text":"hi"}})).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"result":{}}));
    let msgs = c.json_until(|m| m.get("push").is_some()).await;
    assert_eq!(msgs.last().unwrap(), &json!({"push":{"channel":"news","pub":{"data":{"text":"hi"}}}}));

    // Client publish: own publication queued before the reply, with ClientInfo.
    c.send_text(&json!({"id":3,"publish":{"channel":"news","data":{"n":1}}}).to_string()).await;
    let msgs = c.json_until(|m| m["id"] == 3).await;
    assert_eq!(msgs[0]["push"]["pub"]["info"]["user"], "42");
    assert_eq!(msgs.last().unwrap(), &json!({"id":3,"publish":{}}));
}

#[tokio::test]
async fn protobuf_framing_connect_subscribe_publication() {
    let s = TestServer::start(json!({})).await;
    let mut c = WsClient::connect_with(&s.ws_url(), Some("centrifuge-protobuf"), None).await;
    let cmds = vec![
        Command {
            id: 1,
            connect: Some(ConnectRequest { token: user_token("7"), ..Default::default() }),
            ..Default::default()
        },
        Command {
            id: 2,
            subscribe: Some(SubscribeRequest { channel: "news".into(), ..Default::default() }),
            ..Default::default()
        },
    ];
    c.send_binary(gyre_proto::codec::encode_protobuf_commands(&cmds)).await;
    let mut replies = Vec::new();
    while replies.len() < 2 {
        match c.next().await {
            Event::Binary(b) => replies.extend(gyre_proto::codec::decode_replies(ProtocolType::Protobuf, &b).unwrap()),
            other => panic!("expected binary frame, got {other:?}"),
        }
    }
    assert_eq!(replies[0].id, 1);
    assert!(replies[0].connect.as_ref().unwrap().pong);
    assert_eq!(replies[1].id, 2);
    assert!(replies[1].subscribe.is_some());
    // Protobuf clients get the published bytes as-is.
    s.api("publish", json!({"channel":"news","data":{"a":1}})).await;
    let Event::Binary(b) = c.next().await else { panic!("binary") };
    let r = gyre_proto::codec::decode_replies(ProtocolType::Protobuf, &b).unwrap();
    let push = r[0].push.as_ref().unwrap();
    assert_eq!(push.channel, "news");
    assert_eq!(&push.r#pub.as_ref().unwrap().data[..], br#"{"a":1}"#);

    // A client publish in protobuf, then a malformed varint stream → 3501.
    let cmd = Command {
        id: 3,
        publish: Some(PublishRequest {
            channel: "news".into(),
            data: br#"{"b":2}"#.to_vec().into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    c.send_binary(gyre_proto::codec::encode_protobuf_commands(&[cmd])).await;
    let mut got_reply = false;
    while !got_reply {
        let Event::Binary(b) = c.next().await else { panic!("binary") };
        got_reply = gyre_proto::codec::decode_replies(ProtocolType::Protobuf, &b).unwrap().iter().any(|r| r.id == 3);
    }
    c.send_binary(vec![0xff, 0xff, 0xff, 0x0f, 1]).await;
    assert_eq!(c.close_code().await.0, 3501);
}

#[tokio::test]
async fn protobuf_selected_by_query_param() {
    let s = TestServer::start(json!({})).await;
    let mut c = WsClient::connect(&format!("{}?cf_protocol=protobuf", s.ws_url())).await;
    let cmds = vec![Command {
        id: 1,
        connect: Some(ConnectRequest { token: user_token("7"), ..Default::default() }),
        ..Default::default()
    }];
    c.send_binary(gyre_proto::codec::encode_protobuf_commands(&cmds)).await;
    assert!(matches!(c.next().await, Event::Binary(_)));
}

async fn expect_close(s: &TestServer, frames: &[&str], code: u16) {
    let mut c = WsClient::connect(&s.ws_url()).await;
    for f in frames {
        c.send_text(f).await;
    }
    let (got, reason) = c.close_code().await;
    assert_eq!(got, code, "frames {frames:?} closed with {got} {reason}");
}

#[tokio::test]
async fn protocol_errors_disconnect_with_the_spec_codes() {
    let s = TestServer::start(json!({})).await;
    let t = user_token("1");
    let connect = json!({"id":1,"connect":{"token": t}}).to_string();
    // Command before connect.
    expect_close(&s, &[r#"{"id":1,"subscribe":{"channel":"a"}}"#], 3501).await;
    // Malformed JSON / empty line.
    expect_close(&s, &["{not json"], 3501).await;
    expect_close(&s, &[&format!("{connect}\n\n{connect}")], 3501).await;
    // Unknown command (id without a request), second connect, missing channel, bad delta.
    expect_close(&s, &[&connect, r#"{"id":2}"#], 3501).await;
    expect_close(&s, &[&connect, &connect.replace("\"id\":1", "\"id\":2")], 3501).await;
    expect_close(&s, &[&connect, r#"{"id":2,"subscribe":{}}"#], 3501).await;
    expect_close(&s, &[&connect, r#"{"id":2,"subscribe":{"channel":"a","delta":"zip"}}"#], 3501).await;
    // Pong without a ping.
    expect_close(&s, &[&connect, "{}"], 3501).await;
    // Async send has no handler in OSS → 3508.
    expect_close(&s, &[&connect, r#"{"send":{"data":{}}}"#], 3508).await;
    // Invalid token → 3500; no credentials → 3501.
    expect_close(&s, &[r#"{"id":1,"connect":{"token":"a.b.c"}}"#], 3500).await;
    let forged = {
        let claims: std::collections::HashMap<String, serde_json::Value> =
            serde_json::from_value(json!({"sub":"1"})).unwrap();
        gyre_node::auth::sign_hs256("not-the-secret", &claims)
    };
    expect_close(&s, &[&json!({"id":1,"connect":{"token": forged}}).to_string()], 3500).await;
    expect_close(&s, &[r#"{"id":1,"connect":{}}"#], 3501).await;
}

#[tokio::test]
async fn expired_token_is_error_109_and_the_connection_becomes_unusable() {
    let s = TestServer::start(json!({})).await;
    let mut c = WsClient::connect(&s.ws_url()).await;
    let t = token(json!({"sub":"1","exp": gyre_node::node::unix_now() - 5}));
    // The subscribe behind the failed connect is not processed.
    c.send_text(&format!("{}\n{}", json!({"id":1,"connect":{"token": t}}), r#"{"id":2,"subscribe":{"channel":"a"}}"#))
        .await;
    let Event::Json(msgs) = c.next().await else { panic!("json") };
    assert_eq!(msgs, vec![json!({"id":1,"error":{"code":109,"message":"token expired"}})]);
    c.send_text(r#"{"id":3,"subscribe":{"channel":"a"}}"#).await;
    assert_eq!(c.close_code().await.0, 3501);
}

#[tokio::test]
async fn reply_errors_keep_the_connection() {
    let s = TestServer::start(json!({"client": {"channel_limit": 2}})).await;
    let mut c = WsClient::connect(&s.ws_url()).await;
    c.handshake(&user_token("u")).await;
    let cases = [
        (json!({"subscribe":{"channel":"nope:x"}}), 102),
        (json!({"subscribe":{"channel": "a".repeat(256)}}), 107),
        (json!({"subscribe":{"channel":"ñ"}}), 107),
        (json!({"subscribe":{"channel":"$private"}}), 103),
        (json!({"subscribe":{"channel":"a"}}), 0),
        (json!({"subscribe":{"channel":"a"}}), 105),
        (json!({"subscribe":{"channel":"b"}}), 0),
        (json!({"subscribe":{"channel":"c"}}), 106),
        (json!({"publish":{"channel":"ro:x","data":{}}}), 103),
        (json!({"publish":{"channel":"news","data":{}}}), 103),
        (json!({"presence":{"channel":"ro:x"}}), 108),
        (json!({"history":{"channel":"a"}}), 108),
        (json!({"rpc":{"method":"ping"}}), 0),
        (json!({"rpc":{"method":"unknown"}}), 104),
        (json!({"rpc":{"method":"ns:method"}}), 104),
        (json!({"unsubscribe":{"channel":"b"}}), 0),
    ];
    for (i, (cmd, code)) in cases.into_iter().enumerate() {
        let id = i as u64 + 10;
        let mut m = cmd.clone();
        m["id"] = id.into();
        c.send_text(&m.to_string()).await;
        let msgs = c.json_until(|r| r["id"] == id).await;
        let r = msgs.last().unwrap();
        if code == 0 {
            assert!(r.get("error").is_none(), "{cmd} → {r}");
        } else {
            assert_eq!(r["error"]["code"], code, "{cmd} → {r}");
        }
    }
}

#[tokio::test]
async fn oversize_message_closes_with_1009() {
    let s = TestServer::start(json!({"websocket": {"message_size_limit": 1024}})).await;
    let mut c = WsClient::connect(&s.ws_url()).await;
    c.handshake(&user_token("u")).await;
    let big = format!(r#"{{"id":2,"publish":{{"channel":"a","data":"{}"}}}}"#, "x".repeat(2000));
    c.send_text(&big).await;
    assert_eq!(c.close_code().await.0, 1009);
}

#[tokio::test]
async fn no_connect_within_the_deadline_is_stale_3502() {
    let s = TestServer::start(json!({"client": {"stale_close_delay": "300ms"}})).await;
    let mut c = WsClient::connect(&s.ws_url()).await;
    assert_eq!(c.close_code().await.0, 3502);
}

#[tokio::test]
async fn missing_pong_is_3012_and_answered_pings_keep_the_connection() {
    let s = TestServer::start(json!({"client": {"ping_interval": "600ms", "pong_timeout": "300ms"}})).await;
    let mut quiet = WsClient::connect(&s.ws_url()).await;
    let r = quiet.handshake(&user_token("u")).await;
    assert_eq!(r["connect"]["pong"], true);
    let mut polite = WsClient::connect(&s.ws_url()).await;
    polite.handshake(&user_token("u")).await;
    // Answer three pings, each with exactly one pong.
    for _ in 0..3 {
        polite.json_until(|m| m.as_object().is_some_and(|o| o.is_empty())).await;
        polite.send_text("{}").await;
    }
    assert_eq!(quiet.close_code().await.0, 3012);
    // The polite client is still served.
    polite.send_text(r#"{"id":5,"rpc":{"method":"ping"}}"#).await;
    polite.json_until(|m| m["id"] == 5).await;
}

#[tokio::test]
async fn origin_check_and_websocket_upgrade_errors() {
    let s = TestServer::start(json!({})).await;
    let req = |origin: &str| {
        let mut r = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(s.ws_url()).unwrap();
        r.headers_mut().insert("Origin", origin.parse().unwrap());
        r
    };
    let err = tokio_tungstenite::connect_async(req("http://evil.example")).await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    assert!(tokio_tungstenite::connect_async(req("http://allowed.example")).await.is_ok());
    // Empty allowed_origins: any browser Origin is refused.
    let s2 = TestServer::start(json!({"client": {"allowed_origins": []}})).await;
    let mut r = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(s2.ws_url()).unwrap();
    r.headers_mut().insert("Origin", "http://allowed.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(r).await.is_err());
}

#[tokio::test]
async fn slow_consumer_is_disconnected_3008_and_others_get_everything() {
    let s = TestServer::start(json!({"client": {"queue_max_size": 65536}})).await;
    let mut fast = WsClient::connect(&s.ws_url()).await;
    fast.handshake(&user_token("fast")).await;
    fast.send_text(r#"{"id":2,"subscribe":{"channel":"firehose"}}"#).await;
    fast.json_until(|m| m["id"] == 2).await;
    let mut slow = WsClient::connect(&s.ws_url()).await;
    slow.handshake(&user_token("slow")).await;
    slow.send_text(r#"{"id":2,"subscribe":{"channel":"firehose"}}"#).await;
    slow.json_until(|m| m["id"] == 2).await;
    // `slow` now never reads. Publish ~30 MB in 8 KiB messages.
    let payload = "x".repeat(8 * 1024);
    let total = 4000;
    for i in 0..total {
        let data = bytes::Bytes::from(format!(r#"{{"i":{i},"p":"{payload}"}}"#));
        s.node.publish("firehose", data, None, &Default::default()).await.expect("publish");
        // Pace the publisher by the fast reader so only `slow` can fall behind.
        let msgs = fast.json_until(|m| m["push"]["pub"]["data"]["i"] == i).await;
        assert!(msgs.iter().all(|m| m.get("push").is_some()));
        if s.node.disconnect_count(3008) > 0 && i > 100 {
            // Keep publishing a little after the cut-off to prove the fast reader is unaffected.
            if i > 200 {
                break;
            }
        }
    }
    assert_eq!(s.node.disconnect_count(3008), 1, "the slow client was cut off with 3008");
    // Its connection is gone once the close attempt on the stuck socket timed out.
    let deadline = tokio::time::Instant::now() + WAIT;
    while s.node.hub().num_clients() != 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.node.hub().num_clients(), 1);
    drop(slow);
}

#[tokio::test]
async fn shutdown_disconnects_clients_with_3001() {
    let mut s = TestServer::start(json!({})).await;
    let mut c = WsClient::connect(&s.ws_url()).await;
    c.handshake(&user_token("u")).await;
    let closer = tokio::spawn(async move {
        let code = c.close_code().await;
        code.0
    });
    assert!(s.shutdown().await, "drained before the deadline");
    assert_eq!(closer.await.unwrap(), 3001);
}

#[tokio::test]
async fn api_unsubscribe_and_disconnect_reach_the_client() {
    let s = TestServer::start(json!({})).await;
    let mut c = WsClient::connect(&s.ws_url()).await;
    c.handshake(&user_token("alice")).await;
    c.send_text(r#"{"id":2,"subscribe":{"channel":"room"}}"#).await;
    c.json_until(|m| m["id"] == 2).await;
    let (st, _) = s.api("unsubscribe", json!({"user":"alice","channel":"room"})).await;
    assert_eq!(st, 200);
    let msgs = c.json_until(|m| m.get("push").is_some()).await;
    assert_eq!(
        msgs.last().unwrap(),
        &json!({"push":{"channel":"room","unsubscribe":{"code":2000,"reason":"server unsubscribe"}}})
    );
    s.api("subscribe", json!({"user":"alice","channel":"room2","data":{"x":1}})).await;
    let msgs = c.json_until(|m| m.get("push").is_some()).await;
    assert_eq!(msgs.last().unwrap()["push"]["subscribe"]["data"], json!({"x":1}));
    s.api("disconnect", json!({"user":"alice","disconnect":{"code":4500,"reason":"bye"}})).await;
    assert_eq!(c.close_code().await, (4500, "bye".to_string()));
}

#[tokio::test]
async fn refresh_command_extends_the_connection() {
    let s = TestServer::start(json!({})).await;
    let mut c = WsClient::connect(&s.ws_url()).await;
    let now = gyre_node::node::unix_now();
    let r = c.handshake(&token(json!({"sub":"u","exp": now + 100}))).await;
    assert_eq!(r["connect"]["expires"], true);
    let t2 = token(json!({"sub":"u","exp": now + 1000}));
    c.send_text(&json!({"id":2,"refresh":{"token": t2}}).to_string()).await;
    let msgs = c.json_until(|m| m["id"] == 2).await;
    let ttl = msgs.last().unwrap()["refresh"]["ttl"].as_u64().unwrap();
    assert!((990..=1000).contains(&ttl), "{ttl}");
    // A token for another user → 3500.
    let other = token(json!({"sub":"v","exp": now + 1000}));
    c.send_text(&json!({"id":3,"refresh":{"token": other}}).to_string()).await;
    assert_eq!(c.close_code().await.0, 3500);
}

#[tokio::test]
async fn connection_expires_with_3005_without_refresh() {
    let s = TestServer::start(json!({"client": {"expired_close_delay": "0s"}})).await;
    let mut c = WsClient::connect(&s.ws_url()).await;
    c.handshake(&token(json!({"sub":"u","exp": gyre_node::node::unix_now() + 1}))).await;
    let (code, _) = tokio::time::timeout(Duration::from_secs(4), c.close_code()).await.expect("closed in time");
    assert_eq!(code, 3005);
}

#[tokio::test]
async fn other_clients_unaffected_by_a_misbehaving_one() {
    let s = TestServer::start(json!({})).await;
    let mut good = WsClient::connect(&s.ws_url()).await;
    good.handshake(&user_token("good")).await;
    good.send_text(r#"{"id":2,"subscribe":{"channel":"x"}}"#).await;
    good.json_until(|m| m["id"] == 2).await;
    for junk in ["\u{0}", "[]", "{\"id\":1,\"connect\":{\"token\":5}}", "{\"id\":-1}"] {
        let mut bad = WsClient::connect(&s.ws_url()).await;
        bad.send_text(junk).await;
        assert_eq!(bad.close_code().await.0, 3501, "{junk:?}");
    }
    s.api("publish", json!({"channel":"x","data":1})).await;
    let msgs = good.json_until(|m| m.get("push").is_some()).await;
    assert_eq!(msgs.last().unwrap()["push"]["pub"]["data"], 1);
}

#[tokio::test]
async fn prometheus_metrics_count_clients_and_disconnects() {
    let s = TestServer::start(json!({"prometheus": {"enabled": true}})).await;
    let mut c = WsClient::connect(&s.ws_url()).await;
    c.handshake(&user_token("m")).await;
    c.send_text(r#"{"id":2,"subscribe":{"channel":"m"}}"#).await;
    c.json_until(|m| m["id"] == 2).await;
    s.api("publish", json!({"channel":"m","data":{}})).await;
    c.json_until(|m| m.get("push").is_some()).await;
    let mut bad = WsClient::connect(&s.ws_url()).await;
    bad.send_text("junk").await;
    assert_eq!(bad.close_code().await.0, 3501);
    let get = |addr| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut st = tokio::net::TcpStream::connect(addr).await.unwrap();
        st.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        st.read_to_string(&mut out).await.unwrap();
        out
    };
    let text = get(s.addr).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\ncentrifugo_node_num_clients 1\n"), "{text}");
    assert!(text.contains("centrifugo_node_messages_sent_count{type=\"publication\"} 1\n"), "{text}");
    assert!(text.contains("centrifugo_client_num_server_disconnects{code=\"3501\"} 1\n"), "{text}");
}

#[tokio::test]
async fn connection_limit_and_connection_rate_limit_answer_503() {
    // client.connection_limit: a connection over the limit is refused before the upgrade,
    // and a closed connection frees its slot.
    let s = TestServer::start(json!({"client": {"connection_limit": 1}})).await;
    let mut first = WsClient::connect(&s.ws_url()).await;
    first.handshake(&user_token("a")).await;
    let err = tokio_tungstenite::connect_async(s.ws_url()).await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    drop(first);
    let mut admitted = false;
    for _ in 0..50 {
        if tokio_tungstenite::connect_async(s.ws_url()).await.is_ok() {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admitted, "the slot of a closed connection is given back");

    // client.connection_rate_limit: one new connection per second; the next one within the
    // second gets 503 (the open one is unaffected), a second later one is admitted again.
    let s = TestServer::start(json!({"client": {"connection_rate_limit": 1}, "http_stream": {"enabled": true}})).await;
    let mut open = WsClient::connect(&s.ws_url()).await;
    open.handshake(&user_token("b")).await;
    let err = tokio_tungstenite::connect_async(s.ws_url()).await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    let (code, body) = http_post(s.addr, "/connection/http_stream", "", &[]).await;
    assert_eq!((code, body.as_str()), (503, "connection rate limit reached\n"), "every transport is limited");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut later = WsClient::connect(&s.ws_url()).await;
    later.handshake(&user_token("c")).await;
    open.send_text(r#"{"id":9,"rpc":{"method":"ping"}}"#).await;
    open.json_until(|m| m["id"] == 9).await;
}
