//! The simulator's own admin API (no Microsoft equivalent): list and clear accepted messages,
//! list, add and clear faults, sign a user in for the device-code flow (`POST /devicelogin
//! {"user_code": "…", "mailbox": "…"}`, standing for the page at microsoft.com/devicelogin), read and move the manual clock (`GET /clock`,
//! `POST /clock/advance {"seconds": N}`). JSON in and out; a fault is the JSON form of
//! [`crate::faults::Fault`], e.g.
//! `{"step":"end-of-data","action":"reply","code":554,"text":"5.2.0 …","times":2}`.

use hyper::StatusCode;
use serde_json::json;

use super::{Resp, json};
use crate::faults::Fault;
use crate::sim::Shared;

pub(super) fn messages(shared: &Shared) -> Resp {
    let list = shared.messages.lock().expect("messages lock").clone();
    json(StatusCode::OK, &serde_json::to_value(list).unwrap_or_default())
}

pub(super) fn clear_messages(shared: &Shared) -> Resp {
    shared.messages.lock().expect("messages lock").clear();
    json(StatusCode::OK, &json!({"cleared": true}))
}

pub(super) fn faults(shared: &Shared) -> Resp {
    let list = shared.faults.lock().expect("faults lock").pending();
    json(StatusCode::OK, &serde_json::to_value(list).unwrap_or_default())
}

/// Takes one fault or an array of faults.
pub(super) fn add_faults(shared: &Shared, body: &[u8]) -> Resp {
    let parsed: Result<Vec<Fault>, _> =
        serde_json::from_slice::<Vec<Fault>>(body).or_else(|_| serde_json::from_slice::<Fault>(body).map(|f| vec![f]));
    match parsed {
        Ok(list) => {
            let n = list.len();
            let mut faults = shared.faults.lock().expect("faults lock");
            for f in list {
                faults.push(f);
            }
            json(StatusCode::OK, &json!({"added": n}))
        }
        Err(e) => json(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})),
    }
}

pub(super) fn clear_faults(shared: &Shared) -> Resp {
    shared.faults.lock().expect("faults lock").clear();
    json(StatusCode::OK, &json!({"cleared": true}))
}

/// `GET /clock`: the simulator's time and whether it is manual.
pub(super) fn clock(shared: &Shared) -> Resp {
    json(StatusCode::OK, &json!({"now": crate::store::epoch_secs(shared.now()), "manual": shared.manual().is_some()}))
}

/// `POST /clock/advance {"seconds": N}`: moves the manual clock forward. Refused (409) on the
/// system clock: a simulator started for real use must not have its time moved under it.
pub(super) fn advance_clock(shared: &Shared, body: &[u8]) -> Resp {
    let Some(manual) = shared.manual() else {
        return json(
            StatusCode::CONFLICT,
            &json!({"error": "the simulator runs on the system clock; start it with clock = \"manual\""}),
        );
    };
    let seconds = serde_json::from_slice::<serde_json::Value>(body).ok().and_then(|v| v.get("seconds")?.as_f64());
    match seconds {
        Some(s) if s.is_finite() && s >= 0.0 => {
            manual.advance(std::time::Duration::from_secs_f64(s));
            clock(shared)
        }
        _ => json(StatusCode::BAD_REQUEST, &json!({"error": "expected {\"seconds\": N} with N >= 0"})),
    }
}

/// `POST /devicelogin {"user_code", "mailbox"}`.
pub(super) fn device_login(shared: &Shared, body: &[u8]) -> Resp {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let (Some(code), Some(mailbox)) =
        (v.get("user_code").and_then(|c| c.as_str()), v.get("mailbox").and_then(|m| m.as_str()))
    else {
        return json(StatusCode::BAD_REQUEST, &json!({"error": "expected {\"user_code\": …, \"mailbox\": …}"}));
    };
    match shared.device_login(code, mailbox) {
        Ok(()) => json(StatusCode::OK, &json!({"signed_in": true})),
        Err(e) => json(StatusCode::BAD_REQUEST, &json!({"error": e})),
    }
}
