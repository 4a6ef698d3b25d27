//! The simulator's own admin API (no Microsoft equivalent): list and clear accepted messages,
//! list, add and clear faults. JSON in and out; a fault is the JSON form of
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
