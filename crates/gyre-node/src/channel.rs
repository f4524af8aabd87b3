//! Channel names: namespace resolution, name rules, user-limited channels.
//!
//! Channels are opaque strings (`news` ≠ `$news`, `a#1,2` ≠ `a#2,1`); these
//! helpers only interpret the prefix (`$`), the namespace boundary (first `:`)
//! and the user boundary (last `#`), with Centrifugo's semantics.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Channel, ChannelOptions, Config};
use crate::errors::ClientError;

/// Resolved, immutable channel rules built once from the config.
#[derive(Debug)]
pub struct ChannelRules {
    cfg: Channel,
    namespaces: HashMap<String, Arc<NamespaceRules>>,
    default: Arc<NamespaceRules>,
}

/// One namespace's options plus its compiled regex.
#[derive(Debug)]
pub struct NamespaceRules {
    /// Namespace name ("" for channels without namespace).
    pub name: String,
    /// Options.
    pub options: ChannelOptions,
    regex: Option<regex::Regex>,
}

impl ChannelRules {
    /// Builds the rules; the config must already be validated.
    pub fn new(config: &Config) -> Self {
        let mk = |name: &str, o: &ChannelOptions| {
            Arc::new(NamespaceRules {
                name: name.to_string(),
                options: o.clone(),
                regex: if o.channel_regex.is_empty() { None } else { regex::Regex::new(&o.channel_regex).ok() },
            })
        };
        ChannelRules {
            cfg: config.channel.clone(),
            namespaces: config.channel.namespaces.iter().map(|n| (n.name.clone(), mk(&n.name, &n.options))).collect(),
            default: mk("", &config.channel.without_namespace),
        }
    }

    /// Resolves a channel's namespace: 102 when the namespace is not configured.
    pub fn namespace(&self, channel: &str) -> Result<&Arc<NamespaceRules>, ClientError> {
        let rest = channel.strip_prefix(self.cfg.private_prefix.as_str()).unwrap_or(channel);
        match rest.split_once(self.cfg.namespace_boundary.as_str()) {
            Some((ns, _)) => self.namespaces.get(ns).ok_or(ClientError::UNKNOWN_CHANNEL),
            None => Ok(&self.default),
        }
    }

    /// Name checks for a client-side subscription or publish: length, ASCII
    /// (unless the namespace has a regex), regex match. 107 on failure.
    pub fn check_name(&self, channel: &str, ns: &NamespaceRules) -> Result<(), ClientError> {
        if channel.is_empty() || channel.len() > self.cfg.max_length {
            return Err(ClientError::BAD_REQUEST);
        }
        match &ns.regex {
            Some(re) => {
                let rest = channel.strip_prefix(self.cfg.private_prefix.as_str()).unwrap_or(channel);
                let after_ns = if ns.name.is_empty() {
                    rest
                } else {
                    rest.split_once(self.cfg.namespace_boundary.as_str()).map(|(_, r)| r).unwrap_or(rest)
                };
                if !re.is_match(after_ns) {
                    return Err(ClientError::BAD_REQUEST);
                }
            }
            None => {
                if !channel.is_ascii() {
                    return Err(ClientError::BAD_REQUEST);
                }
            }
        }
        Ok(())
    }

    /// Channel starts with the private prefix.
    pub fn is_private(&self, channel: &str) -> bool {
        !self.cfg.private_prefix.is_empty() && channel.starts_with(self.cfg.private_prefix.as_str())
    }

    /// For a user-limited channel (`dialog#42,43`): whether `user` is listed.
    /// `None` when the channel is not user-limited in its namespace.
    pub fn user_allowed(&self, channel: &str, ns: &NamespaceRules, user: &str) -> Option<bool> {
        if !ns.options.allow_user_limited_channels {
            return None;
        }
        let (_, users) = channel.rsplit_once(self.cfg.user_boundary.as_str())?;
        Some(!user.is_empty() && users.split(self.cfg.user_separator.as_str()).any(|u| u == user))
    }

    /// The personal channel of a user in the configured namespace.
    pub fn personal_channel(&self, namespace: &str, user: &str) -> String {
        if namespace.is_empty() {
            format!("{}{}", self.cfg.user_boundary, user)
        } else {
            format!("{namespace}{}{}{user}", self.cfg.namespace_boundary, self.cfg.user_boundary)
        }
    }
}

/// `for_client && (!anonymous || for_anonymous)`, the pattern of every `allow_*` pair.
pub fn allowed(for_client: bool, for_anonymous: bool, anonymous: bool) -> bool {
    for_client && (!anonymous || for_anonymous)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Namespace;

    fn rules() -> ChannelRules {
        let mut c = Config::default();
        c.channel.namespaces.push(Namespace { name: "chat".into(), ..Default::default() });
        let mut dm = Namespace { name: "dm".into(), ..Default::default() };
        dm.options.allow_user_limited_channels = true;
        c.channel.namespaces.push(dm);
        let mut re = Namespace { name: "re".into(), ..Default::default() };
        re.options.channel_regex = "^[a-z]+$".into();
        c.channel.namespaces.push(re);
        ChannelRules::new(&c)
    }

    #[test]
    fn namespaces_resolve_on_first_boundary_after_private_prefix() {
        let r = rules();
        assert_eq!(r.namespace("chat:room").unwrap().name, "chat");
        assert_eq!(r.namespace("$chat:room:x").unwrap().name, "chat");
        assert_eq!(r.namespace("news").unwrap().name, "");
        assert_eq!(r.namespace("nope:x").unwrap_err(), ClientError::UNKNOWN_CHANNEL);
    }

    #[test]
    fn names_are_checked() {
        let r = rules();
        let ns = r.namespace("news").unwrap().clone();
        assert!(r.check_name("news", &ns).is_ok());
        assert_eq!(r.check_name(&"a".repeat(256), &ns), Err(ClientError::BAD_REQUEST));
        assert_eq!(r.check_name("ñ", &ns), Err(ClientError::BAD_REQUEST));
        let re = r.namespace("re:abc").unwrap().clone();
        assert!(r.check_name("re:abc", &re).is_ok());
        assert!(r.check_name("re:ABC", &re).is_err());
    }

    #[test]
    fn user_limited_channels() {
        let r = rules();
        let dm = r.namespace("dm:x#42,43").unwrap().clone();
        assert_eq!(r.user_allowed("dm:x#42,43", &dm, "43"), Some(true));
        assert_eq!(r.user_allowed("dm:x#42,43", &dm, "4"), Some(false));
        assert_eq!(r.user_allowed("dm:x", &dm, "4"), None);
        let chat = r.namespace("chat:x#42").unwrap().clone();
        assert_eq!(r.user_allowed("chat:x#42", &chat, "42"), None);
        assert_eq!(r.personal_channel("dm", "7"), "dm:#7");
    }
}
