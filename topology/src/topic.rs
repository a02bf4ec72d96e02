//! Checked MQTT 5 topic names, topic filters and shared subscriptions
//! (MQTT 5.0 §4.7 and §4.8.2), and the filter algebra routing needs:
//! matching, covering (one filter subsumes another) and overlapping.
//!
//! A value of these types is valid by construction: the constructors reject
//! everything the spec forbids, with an error naming the rule.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Longest topic name or filter, in bytes: MQTT strings carry a 16-bit length.
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a string is not a valid topic name, filter or shared subscription.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Topic names and filters must be at least one character long [MQTT-4.7.3-1].
    #[error("must not be empty")]
    Empty,
    /// Longer than an MQTT string can carry.
    #[error("is {len} bytes long; at most {MAX_TOPIC_LEN} bytes are allowed")]
    TooLong {
        /// Length in bytes.
        len: usize,
    },
    /// The NUL character is forbidden [MQTT-4.7.3-2].
    #[error("contains a NUL character at byte {offset}")]
    Nul {
        /// Byte offset of the NUL.
        offset: usize,
    },
    /// Topic names (what is published to) cannot hold wildcards [MQTT-3.3.2-2].
    #[error(
        "a topic name cannot contain the wildcard `{wildcard}` (byte {offset}); wildcards belong in filters"
    )]
    WildcardInName {
        /// The wildcard character.
        wildcard: char,
        /// Byte offset of the wildcard.
        offset: usize,
    },
    /// `#` must be the last level of a filter [MQTT-4.7.1-1].
    #[error("`#` must be the last level of a filter (found in level {level} of {levels})")]
    HashNotLast {
        /// 1-based level holding the `#`.
        level: usize,
        /// Number of levels in the filter.
        levels: usize,
    },
    /// A wildcard must occupy a whole level [MQTT-4.7.1-2, MQTT-4.7.1-3].
    #[error("`{wildcard}` must occupy a whole level on its own, but level {level} is `{text}`")]
    WildcardNotAlone {
        /// The wildcard character.
        wildcard: char,
        /// 1-based level holding it.
        level: usize,
        /// That level's text.
        text: String,
    },
    /// `$share/...` is a shared subscription, not a plain filter.
    #[error("`$share/...` is a shared subscription, not a plain topic filter")]
    SharedPrefix,
    /// The share name of `$share/<name>/<filter>` is empty or holds `/`, `+` or `#`.
    #[error("invalid share name `{name}`: it must be non-empty and contain no `/`, `+` or `#`")]
    InvalidShareName {
        /// The offending share name.
        name: String,
    },
    /// `$share/<name>` with no filter after it.
    #[error("a shared subscription needs a filter after `$share/<name>/`")]
    MissingSharedFilter,
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong { len: s.len() });
    }
    if let Some(offset) = s.find('\0') {
        return Err(TopicError::Nul { offset });
    }
    Ok(())
}

/// A topic name, as published to: no wildcards, at least one character.
///
/// Cloning is cheap (shared string), because one message's topic is looked at by
/// several routing steps.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicName(Arc<str>);

impl TopicName {
    /// Check `s` and wrap it.
    pub fn new(s: &str) -> Result<Self, TopicError> {
        check_common(s)?;
        if let Some((offset, wildcard)) = s.char_indices().find(|(_, c)| *c == '+' || *c == '#') {
            return Err(TopicError::WildcardInName { wildcard, offset });
        }
        Ok(Self(Arc::from(s)))
    }

    /// The topic as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The topic's levels (split on `/`; empty levels are kept).
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// Whether this is a system topic (first character `$`), which filters
    /// starting with a wildcard do not match [MQTT-4.7.2-1].
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }
}

impl std::borrow::Borrow<str> for TopicName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Topic names checked once: the same few topics arrive again and again,
/// and checking and allocating each anew was a measurable share of an
/// agent's time per message. Bounded: past `max` names a new one is
/// checked and returned but not kept, so a stream of distinct topics
/// costs what it cost without the cache and cannot grow it.
#[derive(Debug, Clone)]
pub struct TopicCache {
    names: rustc_hash::FxHashSet<TopicName>,
    max: usize,
}

impl TopicCache {
    /// An empty cache keeping at most `max` names.
    pub fn new(max: usize) -> Self {
        Self {
            names: Default::default(),
            max,
        }
    }

    /// `s` as a checked topic name, shared with earlier calls for the same
    /// text when the cache holds it.
    pub fn name(&mut self, s: &str) -> Result<TopicName, TopicError> {
        if let Some(t) = self.names.get(s) {
            return Ok(t.clone());
        }
        let t = TopicName::new(s)?;
        if self.names.len() < self.max {
            self.names.insert(t.clone());
        }
        Ok(t)
    }

    /// Names kept.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether it keeps none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// A topic filter, as subscribed to: `+` and `#` wildcards allowed where MQTT
/// allows them. Never a shared subscription (see [`Subscription`]).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicFilter(Arc<str>);

/// One level of a topic filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level<'a> {
    /// Matches exactly this text.
    Literal(&'a str),
    /// `+`: matches any one level.
    Plus,
    /// `#`: matches this level's parent and any number of levels below.
    Hash,
}

impl<'a> Level<'a> {
    fn of(text: &'a str) -> Self {
        match text {
            "+" => Level::Plus,
            "#" => Level::Hash,
            other => Level::Literal(other),
        }
    }
}

impl TopicFilter {
    /// Check `s` and wrap it.
    pub fn new(s: &str) -> Result<Self, TopicError> {
        check_common(s)?;
        if s.starts_with("$share/") || s == "$share" {
            return Err(TopicError::SharedPrefix);
        }
        let levels = s.split('/').count();
        for (i, text) in s.split('/').enumerate() {
            let level = i + 1;
            for wildcard in ['+', '#'] {
                if text.contains(wildcard) && text.len() != 1 {
                    return Err(TopicError::WildcardNotAlone {
                        wildcard,
                        level,
                        text: text.to_owned(),
                    });
                }
            }
            if text == "#" && level != levels {
                return Err(TopicError::HashNotLast { level, levels });
            }
        }
        Ok(Self(Arc::from(s)))
    }

    /// The filter as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The filter's levels.
    pub fn levels(&self) -> impl Iterator<Item = Level<'_>> + Clone {
        self.0.split('/').map(Level::of)
    }

    /// Whether the filter holds a wildcard.
    pub fn has_wildcard(&self) -> bool {
        self.0.contains(['+', '#'])
    }

    /// Whether the first level is a wildcard (such filters never match `$` topics).
    fn starts_with_wildcard(&self) -> bool {
        matches!(self.levels().next(), Some(Level::Plus | Level::Hash))
    }

    /// Whether the first level is a literal starting with `$`.
    fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }

    /// Whether `topic` matches this filter (MQTT 5.0 §4.7). This is the
    /// reference implementation; [`crate::Matcher`] answers the same question
    /// for many filters at once.
    pub fn matches(&self, topic: &TopicName) -> bool {
        if topic.is_system() && self.starts_with_wildcard() {
            return false;
        }
        let mut filter = self.levels();
        let mut topic = topic.levels();
        loop {
            match (filter.next(), topic.next()) {
                (Some(Level::Hash), _) => return true,
                (Some(Level::Plus), Some(_)) => {}
                (Some(Level::Literal(f)), Some(t)) if f == t => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// Whether every topic matched by `other` is also matched by `self`.
    pub fn covers(&self, other: &TopicFilter) -> bool {
        if other.is_system() && self.starts_with_wildcard() {
            // `other` only matches `$` topics (or nothing), which `self` never matches.
            return false;
        }
        let mut mine = self.levels();
        let mut theirs = other.levels();
        loop {
            match (mine.next(), theirs.next()) {
                (Some(Level::Hash), _) => return true,
                (Some(Level::Plus), Some(Level::Plus | Level::Literal(_))) => {}
                (Some(Level::Literal(a)), Some(Level::Literal(b))) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// Whether some topic is matched by both filters.
    pub fn overlaps(&self, other: &TopicFilter) -> bool {
        if (self.is_system() && other.starts_with_wildcard())
            || (other.is_system() && self.starts_with_wildcard())
        {
            return false;
        }
        let mut a = self.levels();
        let mut b = other.levels();
        loop {
            match (a.next(), b.next()) {
                (Some(Level::Hash), _) | (_, Some(Level::Hash)) => return true,
                (None, None) => return true,
                (Some(Level::Plus), Some(_)) | (Some(_), Some(Level::Plus)) => {}
                (Some(Level::Literal(x)), Some(Level::Literal(y))) if x == y => {}
                _ => return false,
            }
        }
    }
}

/// A subscription as a client sends it: a plain filter, or a shared
/// subscription `$share/<group>/<filter>` (MQTT 5.0 §4.8.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subscription {
    /// A plain filter.
    Plain(TopicFilter),
    /// A shared subscription: the broker hands each message to one member of `group`.
    Shared {
        /// The share name.
        group: Arc<str>,
        /// The filter the group subscribes to.
        filter: TopicFilter,
    },
}

impl Subscription {
    /// Parse a subscription string.
    pub fn parse(s: &str) -> Result<Self, TopicError> {
        let Some(rest) = s.strip_prefix("$share/") else {
            return TopicFilter::new(s).map(Subscription::Plain);
        };
        let Some((group, filter)) = rest.split_once('/') else {
            return Err(if rest.is_empty() || rest.contains(['+', '#']) {
                TopicError::InvalidShareName {
                    name: rest.to_owned(),
                }
            } else {
                TopicError::MissingSharedFilter
            });
        };
        if group.is_empty() || group.contains(['+', '#']) {
            return Err(TopicError::InvalidShareName {
                name: group.to_owned(),
            });
        }
        if filter.is_empty() {
            return Err(TopicError::MissingSharedFilter);
        }
        Ok(Subscription::Shared {
            group: Arc::from(group),
            filter: TopicFilter::new(filter)?,
        })
    }

    /// The filter that decides which messages the subscription receives:
    /// this is what counts as interest.
    pub fn filter(&self) -> &TopicFilter {
        match self {
            Subscription::Plain(filter) | Subscription::Shared { filter, .. } => filter,
        }
    }
}

macro_rules! string_newtype_impls {
    ($ty:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::str::FromStr for $ty {
            type Err = TopicError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }
        impl TryFrom<String> for $ty {
            type Error = TopicError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(&s)
            }
        }
        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.0.to_string()
            }
        }
    };
}
string_newtype_impls!(TopicName);
string_newtype_impls!(TopicFilter);

impl fmt::Display for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subscription::Plain(filter) => write!(f, "{filter}"),
            Subscription::Shared { group, filter } => write!(f, "$share/{group}/{filter}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    #[test]
    fn the_topic_cache_shares_checked_names_and_stays_bounded() {
        let mut c = super::TopicCache::new(2);
        let a = c.name("a/b").unwrap();
        let again = c.name("a/b").unwrap();
        assert!(
            std::sync::Arc::ptr_eq(&a.0, &again.0),
            "shared, not allocated again"
        );
        assert!(c.name("a/+").is_err(), "still checked");
        c.name("c").unwrap();
        assert_eq!(
            c.name("d").unwrap().as_str(),
            "d",
            "past the bound: checked, not kept"
        );
        assert_eq!(c.len(), 2);
    }

    fn f(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }
    fn t(s: &str) -> TopicName {
        TopicName::new(s).unwrap()
    }

    #[test]
    fn filter_rules() {
        for ok in [
            "#", "+", "a/#", "a/+/b", "/", "a//b", "+/+", "/#", "$SYS/#", "a/b/c",
        ] {
            assert!(TopicFilter::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            TopicFilter::new("a/#/b"),
            Err(TopicError::HashNotLast {
                level: 2,
                levels: 3
            })
        );
        assert!(matches!(
            TopicFilter::new("a#"),
            Err(TopicError::WildcardNotAlone {
                wildcard: '#',
                level: 1,
                ..
            })
        ));
        assert!(matches!(
            TopicFilter::new("a/b+"),
            Err(TopicError::WildcardNotAlone {
                wildcard: '+',
                level: 2,
                ..
            })
        ));
        assert_eq!(TopicFilter::new(""), Err(TopicError::Empty));
        assert_eq!(TopicFilter::new("a\0b"), Err(TopicError::Nul { offset: 1 }));
        assert_eq!(
            TopicFilter::new("$share/g/a"),
            Err(TopicError::SharedPrefix)
        );
        let long = "a".repeat(MAX_TOPIC_LEN + 1);
        assert_eq!(
            TopicFilter::new(&long),
            Err(TopicError::TooLong {
                len: MAX_TOPIC_LEN + 1
            })
        );
        assert!(TopicFilter::new(&long[1..]).is_ok());
    }

    #[test]
    fn name_rules() {
        assert!(TopicName::new("a/b").is_ok());
        assert!(TopicName::new("/").is_ok());
        assert_eq!(
            TopicName::new("a/+"),
            Err(TopicError::WildcardInName {
                wildcard: '+',
                offset: 2
            })
        );
        assert_eq!(TopicName::new(""), Err(TopicError::Empty));
    }

    #[test]
    fn matching_follows_the_spec_examples() {
        // MQTT 5.0 §4.7.1.2 and §4.7.1.3 examples.
        assert!(f("sport/tennis/player1/#").matches(&t("sport/tennis/player1")));
        assert!(f("sport/tennis/player1/#").matches(&t("sport/tennis/player1/ranking")));
        assert!(f("sport/tennis/player1/#").matches(&t("sport/tennis/player1/score/wimbledon")));
        assert!(f("sport/#").matches(&t("sport")));
        assert!(f("sport/tennis/+").matches(&t("sport/tennis/player1")));
        assert!(!f("sport/tennis/+").matches(&t("sport/tennis/player1/ranking")));
        assert!(!f("sport/+").matches(&t("sport")));
        assert!(f("sport/+").matches(&t("sport/")));
        assert!(f("+/+").matches(&t("/finance")));
        assert!(f("/+").matches(&t("/finance")));
        assert!(!f("+").matches(&t("/finance")));
        // §4.7.2: `$` topics are not matched by a leading wildcard.
        assert!(!f("#").matches(&t("$SYS/broker")));
        assert!(!f("+/monitor/Clients").matches(&t("$SYS/monitor/Clients")));
        assert!(f("$SYS/#").matches(&t("$SYS/monitor/Clients")));
        assert!(f("$SYS/monitor/+").matches(&t("$SYS/monitor/Clients")));
    }

    #[test]
    fn covering_and_overlap() {
        assert!(f("a/#").covers(&f("a")));
        assert!(f("a/#").covers(&f("a/+/c")));
        assert!(f("a/+/c").covers(&f("a/b/c")));
        assert!(!f("a/+/c").covers(&f("a/#")));
        assert!(!f("#").covers(&f("$SYS/x")));
        assert!(f("a/+").overlaps(&f("+/b")));
        assert!(!f("a/+").overlaps(&f("b/+")));
        assert!(f("a/#").overlaps(&f("a")));
        assert!(!f("a/+").overlaps(&f("a")));
        assert!(!f("+/x").overlaps(&f("$SYS/x")));
    }

    #[test]
    fn shared_subscriptions() {
        let s = Subscription::parse("$share/mqlink-eu/factory/+/temp").unwrap();
        assert_eq!(s.filter(), &f("factory/+/temp"));
        assert!(matches!(&s, Subscription::Shared { group, .. } if &**group == "mqlink-eu"));
        assert_eq!(s.to_string(), "$share/mqlink-eu/factory/+/temp");
        assert_eq!(
            Subscription::parse("$share/g"),
            Err(TopicError::MissingSharedFilter)
        );
        assert_eq!(
            Subscription::parse("$share/g/"),
            Err(TopicError::MissingSharedFilter)
        );
        assert!(matches!(
            Subscription::parse("$share//a"),
            Err(TopicError::InvalidShareName { .. })
        ));
        assert!(matches!(
            Subscription::parse("$share/g+/a"),
            Err(TopicError::InvalidShareName { .. })
        ));
        assert_eq!(
            Subscription::parse("a/b").unwrap(),
            Subscription::Plain(f("a/b"))
        );
    }
}
