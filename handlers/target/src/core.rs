//! Authenticate, authorize, answer. Pure apart from JWT verification.

use std::collections::BTreeMap;

use auth::{Rejection, Verifier};
use serde::Serialize;
use serde_json::{Value, json};
use telemetry::{
    CredentialKind, CredentialProvenance, FailureReason, Hop, HopSpan, Pattern, TraceContext, attrs,
};
use tracing::instrument;

/// One order.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Order {
    /// Id.
    pub id: String,
    /// Owner (the `sub` of the user).
    pub owner: String,
    /// Item.
    pub item: String,
    /// Amount in cents.
    pub amount_cents: u64,
}

/// The seeded data set.
pub fn seed_orders() -> BTreeMap<String, Order> {
    [
        ("A-1001", "alice", "keyboard", 12_900),
        ("A-1002", "alice", "monitor", 34_900),
        ("B-2001", "bob", "headset", 8_900),
        ("C-3001", "carol", "desk", 45_000),
    ]
    .into_iter()
    .map(|(id, owner, item, amount)| {
        (
            id.to_owned(),
            Order {
                id: id.to_owned(),
                owner: owner.to_owned(),
                item: item.to_owned(),
                amount_cents: amount,
            },
        )
    })
    .collect()
}

/// Dependencies.
#[derive(Debug, Clone)]
pub struct Deps {
    /// User-token verifier.
    pub verifier: Verifier,
    /// Scope needed to read.
    pub read_scope: String,
    /// Data.
    pub orders: BTreeMap<String, Order>,
}

/// What the caller asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// `GET /orders`.
    ListOrders,
    /// `GET /orders/{orderId}`.
    GetOrder(String),
}

/// A response: status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: Value,
}

fn reject(span: &mut HopSpan, reason: FailureReason, message: &str) -> Reply {
    span.reject(reason);
    let r = Rejection::with_message(Hop::Target, reason, message);
    Reply {
        status: r.status(),
        body: r.body(),
    }
}

/// Handle one request: `authorization` is the raw `Authorization` header value, if any.
#[instrument(skip_all, level = "debug", name = "target.handle")]
pub async fn handle(
    op: Operation,
    authorization: Option<&str>,
    parent: &TraceContext,
    deps: &Deps,
) -> Reply {
    let mut span = HopSpan::hop(Hop::Target, Pattern::Passthrough, parent);
    span.carrier("header:authorization");
    let Some(header) = authorization else {
        span.credential(&CredentialProvenance::absent());
        return reject(
            &mut span,
            FailureReason::MissingToken,
            "no Authorization header",
        );
    };
    let Some(token) = auth::bearer_token(header) else {
        span.credential(&CredentialProvenance::absent());
        return reject(
            &mut span,
            FailureReason::Malformed,
            "Authorization is not a Bearer credential",
        );
    };
    let verified = match span.context().scope(deps.verifier.verify(&token)).await {
        Ok(v) => v,
        Err(e) => {
            span.credential(&CredentialProvenance::opaque(
                CredentialKind::UserJwt,
                &token,
            ));
            return reject(&mut span, e.reason, &e.detail);
        }
    };
    span.credential(&verified.provenance(CredentialKind::UserJwt, &token));
    let subject = verified.claims.sub.clone();
    span.enduser(&subject);
    if !verified
        .claims
        .has_scopes(std::slice::from_ref(&deps.read_scope))
    {
        return reject(
            &mut span,
            FailureReason::InsufficientScope,
            &format!("scope `{}` required", deps.read_scope),
        );
    }
    let reply = match op {
        Operation::ListOrders => {
            let mine: Vec<&crate::core::Order> = deps
                .orders
                .values()
                .filter(|o| o.owner == subject)
                .collect();
            Reply {
                status: 200,
                body: json!({"orders": mine}),
            }
        }
        Operation::GetOrder(id) => match deps.orders.get(&id) {
            None => return reject(&mut span, FailureReason::NotFound, "no such order"),
            Some(o) if o.owner != subject => {
                return reject(
                    &mut span,
                    FailureReason::Forbidden,
                    "an order can only be read by its owner",
                );
            }
            Some(o) => Reply {
                status: 200,
                body: json!({"order": o, "reached_as": subject}),
            },
        },
    };
    span.attr(attrs::semconv::HTTP_RESPONSE_STATUS_CODE, reply.status);
    span.ok();
    reply
}
