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
    /// User-token verifier (passthrough), when user tokens are accepted.
    pub user: Option<Verifier>,
    /// Service-token verifier (broker: the service audience and clients), when accepted.
    pub service: Option<Verifier>,
    /// The audience that marks a service token.
    pub service_audience: String,
    /// Scope needed to read.
    pub read_scope: String,
    /// The pattern this deployment serves (for requests whose credential does not say).
    pub pattern: Pattern,
    /// Data.
    pub orders: BTreeMap<String, Order>,
}

impl Deps {
    /// The verifier and credential kind for `token`: a token whose (unverified) audience is the
    /// service audience goes to the service verifier, anything else to the user verifier.
    fn verifier_for(&self, token: &secrecy::SecretString) -> Option<(&Verifier, CredentialKind)> {
        let looks_like_service = auth::verify::decode_unverified(token)
            .map(|c| c.audience.iter().any(|a| a == &self.service_audience))
            .unwrap_or(false);
        match (looks_like_service, &self.service, &self.user) {
            (true, Some(v), _) => Some((v, CredentialKind::ServiceToken)),
            (_, _, Some(v)) => Some((v, CredentialKind::UserJwt)),
            (false, Some(v), None) => Some((v, CredentialKind::ServiceToken)),
            (true, None, None) | (false, None, None) => None,
        }
    }
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
    let mut span = HopSpan::hop(Hop::Target, deps.pattern, parent);
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
    let Some((verifier, kind)) = deps.verifier_for(&token) else {
        span.credential(&CredentialProvenance::opaque(
            CredentialKind::UserJwt,
            &token,
        ));
        return reject(
            &mut span,
            FailureReason::Internal,
            "no credential kind is accepted",
        );
    };
    let verified = match span.context().scope(verifier.verify(&token)).await {
        Ok(v) => v,
        Err(e) => {
            span.credential(&CredentialProvenance::opaque(kind, &token));
            return reject(&mut span, e.reason, &e.detail);
        }
    };
    span.credential(&verified.provenance(kind, &token));
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
    // A user reads their own orders; a service account (broker pattern) acts for the whole API,
    // which is what the broker pattern trades away: the target no longer knows the user.
    let may_read = |o: &Order| kind == CredentialKind::ServiceToken || o.owner == subject;
    let reply = match op {
        Operation::ListOrders => {
            let mine: Vec<&crate::core::Order> =
                deps.orders.values().filter(|o| may_read(o)).collect();
            Reply {
                status: 200,
                body: json!({"orders": mine}),
            }
        }
        Operation::GetOrder(id) => match deps.orders.get(&id) {
            None => return reject(&mut span, FailureReason::NotFound, "no such order"),
            Some(o) if !may_read(o) => {
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
