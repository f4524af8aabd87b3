//! The control plane of a clustered node: heartbeats, broadcasts of API
//! operations, surveys and node-to-node messages (see the `node` module docs).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::*;

impl Node {
    /// Starts the heartbeat loop of a clustered node (call once, inside a
    /// Tokio runtime). The loop holds a weak reference: it ends with the node.
    pub fn start_cluster(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(node) = weak.upgrade() else { return };
                if node.is_shutting_down() {
                    return;
                }
                node.expire_peers();
                if node.health() == EngineHealth::Ready {
                    node.send_heartbeat().await;
                }
            }
        });
    }

    pub(super) async fn send_heartbeat(&self) {
        let msg = ControlMsg::Node { info: self.info() };
        if let Err(e) = self.send_control(msg, None).await {
            tracing::debug!(error = %e, "heartbeat not sent");
        }
    }

    pub(super) fn expire_peers(&self) {
        let now = Instant::now();
        self.peers.lock().retain(|_, (_, exp)| *exp > now);
    }

    pub(super) async fn send_control(&self, msg: ControlMsg, to: Option<&str>) -> Result<(), EngineError> {
        let env = Envelope { from: self.uid.clone(), msg };
        let data = serde_json::to_vec(&env).map_err(|e| EngineError::Other(e.to_string()))?;
        self.broker.publish_control(Bytes::from(data), to).await
    }

    pub(super) async fn broadcast(&self, msg: ControlMsg) -> Result<(), ClientError> {
        self.send_control(msg, None).await.map_err(|e| {
            tracing::warn!(error = %e, "control broadcast failed");
            ClientError::INTERNAL
        })
    }

    /// Applies a control message from another node.
    pub(super) fn apply_control(self: Arc<Self>, env: Envelope) {
        match env.msg {
            ControlMsg::Node { info } => {
                let new = self.peers.lock().insert(env.from.clone(), (info, Instant::now() + NODE_TTL)).is_none();
                if new && !self.is_shutting_down() {
                    // Introduce ourselves at once instead of at the next tick.
                    let node = self.clone();
                    tokio::spawn(async move { node.send_heartbeat().await });
                }
            }
            ControlMsg::Shutdown => {
                self.peers.lock().remove(&env.from);
            }
            ControlMsg::Disconnect { target, whitelist, code, reason } => {
                self.disconnect_local(&target, &whitelist, Disconnect::custom(code, reason));
            }
            ControlMsg::Unsubscribe { target, channel } => self.unsubscribe_local(&target, &channel),
            ControlMsg::Subscribe { target, sub } => self.subscribe_local(&target, sub.into()),
            ControlMsg::Refresh { target, expired, expire_at, info } => {
                self.refresh_local(&target, expired, expire_at, info.map(|i| unb64(&i)));
            }
            ControlMsg::SurveyRequest { id, op, pattern } => {
                let channels = if op == "channels" { self.local_channels(&pattern) } else { Vec::new() };
                let node = self.clone();
                tokio::spawn(async move {
                    let reply = ControlMsg::SurveyReply { id, channels };
                    if let Err(e) = node.send_control(reply, Some(&env.from)).await {
                        tracing::warn!(error = %e, "survey reply not sent");
                    }
                });
            }
            ControlMsg::SurveyReply { id, channels } => {
                if let Some(tx) = self.surveys.lock().get(&id) {
                    let _ = tx.send((env.from, channels));
                }
            }
            ControlMsg::User { data } => {
                let h = self.node_handler.read().clone();
                match h {
                    Some(h) => h(&env.from, unb64(&data)),
                    None => tracing::debug!(from = %env.from, "node message without a handler dropped"),
                }
            }
        }
    }

    /// Registers the receiver of [`Node::send_to_node`] payloads on this node.
    pub fn on_node_message(&self, handler: NodeMessageHandler) {
        *self.node_handler.write() = Some(handler);
    }

    /// Sends opaque bytes to the handler registered on node `uid` (this node
    /// included). Fails when the broker cannot carry it; delivery to a live
    /// node is at-most-once, like every control message.
    pub async fn send_to_node(&self, uid: &str, data: Bytes) -> Result<(), ClientError> {
        if uid == self.uid {
            let h = self.node_handler.read().clone();
            if let Some(h) = h {
                h(&self.uid, data);
            }
            return Ok(());
        }
        self.send_control(ControlMsg::User { data: b64(&data) }, Some(uid)).await.map_err(|e| {
            tracing::warn!(error = %e, node = uid, "send to node failed");
            ClientError::INTERNAL
        })
    }

    /// Every live node: this one first, then the others by name.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.expire_peers();
        let mut others: Vec<NodeInfo> = self.peers.lock().values().map(|(i, _)| i.clone()).collect();
        others.sort_by(|a, b| a.name.cmp(&b.name).then(a.uid.cmp(&b.uid)));
        let mut v = vec![self.info()];
        v.extend(others);
        v
    }

    /// Active channels of every node (API `channels`), with subscriber counts
    /// summed. Fails if a live node does not answer within [`SURVEY_TIMEOUT`]:
    /// a partial list would be a silent lie.
    pub async fn channels(&self, pattern: &str) -> Result<Vec<(String, usize)>, ClientError> {
        let mut all: HashMap<String, usize> = HashMap::new();
        for (ch, n) in self.local_channels(pattern) {
            *all.entry(ch).or_default() += n;
        }
        self.expire_peers();
        let mut waiting: std::collections::HashSet<String> = self.peers.lock().keys().cloned().collect();
        if !waiting.is_empty() {
            let id = self.survey_seq.fetch_add(1, Ordering::Relaxed);
            let (tx, mut rx) = mpsc::unbounded_channel();
            self.surveys.lock().insert(id, tx);
            let sent =
                self.broadcast(ControlMsg::SurveyRequest { id, op: "channels".into(), pattern: pattern.into() }).await;
            let deadline = Instant::now() + SURVEY_TIMEOUT;
            let res = match sent {
                Err(e) => Err(e),
                Ok(()) => loop {
                    if waiting.is_empty() {
                        break Ok(());
                    }
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some((from, chans))) => {
                            if waiting.remove(&from) {
                                for (ch, n) in chans {
                                    *all.entry(ch).or_default() += n;
                                }
                            }
                        }
                        Ok(None) | Err(_) => {
                            tracing::warn!(missing = ?waiting, "channels survey: nodes did not answer");
                            break Err(ClientError::INTERNAL);
                        }
                    }
                },
            };
            self.surveys.lock().remove(&id);
            res?;
        }
        let mut v: Vec<(String, usize)> = all.into_iter().collect();
        v.sort();
        Ok(v)
    }
}
