//! The routes about one user: `POST /api/kick` and `GET /api/presence`. Each asks through
//! [`Reach`], so on a node in a cluster every node holding the user answers (and the answer
//! lists them under `cluster`), and on a node alone the user's home shard does.

use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use super::ctx::Ctx;
use super::reach::{Answer, Reach};
use super::requests::{check_user, KickRequest};
use super::response::{json_response, ApiError, Body};
use crate::cluster::{ClusterMsg, Fanned};
use crate::control::{Control, Kick};
use crate::routing::shard_for;

/// Kicks the user's connections (one device's, when given) on every node that holds them.
pub(super) async fn kick(ctx: &Ctx, body: KickRequest) -> Result<Response<Body>, ApiError> {
    check_user(&body.user)?;
    let code = body.close_code()?;
    let kick = Kick {
        user: body.user.clone(),
        device: body.device.clone(),
        code,
        may_reconnect: body.may_reconnect,
    };
    let answer = Reach::of(ctx)
        .ask(
            &body.user,
            |reply| ClusterMsg::Kick {
                kick: kick.clone(),
                reply,
            },
            |reply| Control::Kick {
                kick: kick.clone(),
                reply,
            },
        )
        .await?;
    let answer = match answer {
        Answer::Cluster(fanned) => json!({
            "user": body.user,
            "device": body.device,
            "code": code.to_u16(),
            "kicked": fanned.total(),
            "cluster": cluster_json(ctx, &fanned),
        }),
        Answer::Home(kicked) => json!({
            "user": body.user,
            "device": body.device,
            "code": code.to_u16(),
            "kicked": kicked,
        }),
    };
    Ok(json_response(StatusCode::OK, &answer))
}

/// Says whether the user is online, and on how many devices.
pub(super) async fn presence(ctx: &Ctx, user: String) -> Result<Response<Body>, ApiError> {
    check_user(&user)?;
    let answer = Reach::of(ctx)
        .ask(
            &user,
            |reply| ClusterMsg::Presence {
                user: user.clone(),
                reply,
            },
            |reply| Control::Presence {
                user: user.clone(),
                reply,
            },
        )
        .await?;
    let answer = match answer {
        Answer::Cluster(fanned) => {
            let devices = fanned.total();
            json!({
                "user": user,
                "online": devices > 0,
                "devices": devices,
                "shard": shard_for(&user, ctx.plane.mesh.len()),
                "cluster": cluster_json(ctx, &fanned),
            })
        }
        Answer::Home(p) => json!({
            "user": user,
            "online": p.devices > 0,
            "devices": p.devices,
            "shard": p.shard,
        }),
    };
    Ok(json_response(StatusCode::OK, &answer))
}

/// Every node's part of a kick or presence answer.
fn cluster_json(ctx: &Ctx, fanned: &Fanned) -> Value {
    let me = ctx.plane.cluster.as_ref().map_or("", |(id, _)| id.as_str());
    let mut nodes = vec![match fanned.local {
        Some(n) => json!({"node": me, "count": n}),
        None => json!({"node": me, "error": "shard_unavailable"}),
    }];
    for (node, count) in &fanned.nodes {
        nodes.push(match count {
            Ok(n) => json!({"node": node, "count": n}),
            Err(e) => json!({"node": node, "error": e}),
        });
    }
    json!({
        "node": me,
        "directory": if fanned.directory { "ok" } else { "unavailable" },
        "nodes": nodes,
    })
}
