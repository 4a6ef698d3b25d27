//! Fault injection: scripted replies, disconnects and delays for chosen protocol steps, so tests
//! can reproduce any row of the reference's reply table on demand.
//!
//! A [`Fault`] names a [`Step`] (a command verb, the banner, or the end of a message), what to do
//! there, and how many times. Faults are kept in order; at each step the first live one that
//! matches fires and counts down. They are global to the simulator (not per connection) because
//! a relay under test opens its own connections, out of the test's reach; `mailbox` narrows a
//! fault to sessions authenticated for one mailbox when that matters.

use serde::{Deserialize, Serialize};

/// Where in a conversation a fault fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Instead of the 220 banner.
    Connect,
    /// EHLO or HELO.
    Ehlo,
    /// STARTTLS.
    Starttls,
    /// AUTH (the whole exchange: fires on the AUTH command).
    Auth,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// The DATA command (before 354).
    Data,
    /// The end of a message (after the final dot or BDAT LAST): replaces the 250.
    EndOfData,
    /// QUIT.
    Quit,
    /// Any SMTP command (not the banner, not the end of data).
    AnyCommand,
    /// A Graph sendMail request: a `reply` fault answers with its code as the HTTP status
    /// (429 adds `Retry-After`) and its text as the Graph error code.
    GraphSendMail,
    /// A chunk PUT to a Graph attachment upload session: a `reply` fault answers with its code
    /// as the HTTP status and its text as the error code; the chunk is not kept.
    GraphUploadChunk,
}

/// What a fault does.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Answer this instead of the real reply. `text` may start with an enhanced code
    /// (`"4.7.500 Server busy"`); it is sent as written, without the `[HOST …]` suffix. A
    /// message refused this way is not stored.
    Reply {
        /// Reply code.
        code: u16,
        /// Reply text.
        text: String,
        /// Close the connection after the reply (as with a 421).
        #[serde(default)]
        close: bool,
    },
    /// Close the connection without a reply.
    Disconnect,
    /// Wait this long (real time, not the simulator's clock: it stands for a slow network) and
    /// then go on normally.
    Delay {
        /// Milliseconds.
        ms: u64,
    },
}

/// One scripted fault.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Fault {
    /// Where it fires.
    pub step: Step,
    /// What it does.
    #[serde(flatten)]
    pub action: Action,
    /// How many times it fires (default 1).
    #[serde(default = "one")]
    pub times: u32,
    /// Only in sessions authenticated for this mailbox (any session if absent).
    #[serde(default)]
    pub mailbox: Option<String>,
}

fn one() -> u32 {
    1
}

impl Fault {
    /// A fault replying `code text` once at `step`.
    pub fn reply(step: Step, code: u16, text: impl Into<String>) -> Fault {
        Fault { step, action: Action::Reply { code, text: text.into(), close: false }, times: 1, mailbox: None }
    }

    /// A fault closing the connection once at `step`.
    pub fn disconnect(step: Step) -> Fault {
        Fault { step, action: Action::Disconnect, times: 1, mailbox: None }
    }

    /// A fault delaying `step` once.
    pub fn delay(step: Step, ms: u64) -> Fault {
        Fault { step, action: Action::Delay { ms }, times: 1, mailbox: None }
    }

    /// The same fault, firing `n` times.
    pub fn times(mut self, n: u32) -> Fault {
        self.times = n;
        self
    }

    /// The same fault, only for sessions of `mailbox`.
    pub fn for_mailbox(mut self, mailbox: impl Into<String>) -> Fault {
        self.mailbox = Some(mailbox.into().to_ascii_lowercase());
        self
    }
}

/// The pending faults, in the order they were added.
#[derive(Debug, Default)]
pub struct Faults {
    list: Vec<Fault>,
}

impl Faults {
    /// Adds a fault after the existing ones.
    pub fn push(&mut self, fault: Fault) {
        if fault.times > 0 {
            self.list.push(fault);
        }
    }

    /// Removes all faults.
    pub fn clear(&mut self) {
        self.list.clear();
    }

    /// The faults still pending.
    pub fn pending(&self) -> Vec<Fault> {
        self.list.clone()
    }

    /// Fires the first fault matching `step` for a session of `mailbox` (if authenticated),
    /// counting it down; returns its action.
    pub fn take(&mut self, step: Step, mailbox: Option<&str>) -> Option<Action> {
        let is_command =
            !matches!(step, Step::Connect | Step::EndOfData | Step::GraphSendMail | Step::GraphUploadChunk);
        let idx = self.list.iter().position(|f| {
            (f.step == step || (f.step == Step::AnyCommand && is_command))
                && f.mailbox.as_deref().is_none_or(|m| Some(m) == mailbox.map(str::to_ascii_lowercase).as_deref())
        })?;
        let f = &mut self.list[idx];
        let action = f.action.clone();
        f.times -= 1;
        if f.times == 0 {
            self.list.remove(idx);
        }
        Some(action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_down_and_matches_in_order() {
        let mut f = Faults::default();
        f.push(Fault::reply(Step::Mail, 451, "4.7.500 busy").times(2));
        f.push(Fault::disconnect(Step::AnyCommand));
        assert!(matches!(f.take(Step::Mail, None), Some(Action::Reply { .. })));
        assert!(matches!(f.take(Step::Mail, None), Some(Action::Reply { .. })));
        assert_eq!(f.take(Step::Mail, None), Some(Action::Disconnect));
        assert_eq!(f.take(Step::Mail, None), None);
    }

    #[test]
    fn mailbox_scope() {
        let mut f = Faults::default();
        f.push(Fault::disconnect(Step::EndOfData).for_mailbox("A@x.com"));
        assert_eq!(f.take(Step::EndOfData, None), None);
        assert_eq!(f.take(Step::EndOfData, Some("b@x.com")), None);
        assert_eq!(f.take(Step::EndOfData, Some("a@x.com")), Some(Action::Disconnect));
    }

    #[test]
    fn json_shape() {
        let f: Fault =
            serde_json::from_str(r#"{"step":"end-of-data","action":"reply","code":554,"text":"5.2.0 x","times":3}"#)
                .unwrap();
        assert_eq!(f.times, 3);
        assert_eq!(f.step, Step::EndOfData);
    }
}
