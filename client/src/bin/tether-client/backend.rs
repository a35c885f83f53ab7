//! `tether-client backend`: log in as a backend service with the UPSTREAM flag, print every
//! client's upstream message (`UpstreamDeliver`) and answer it: accepted with the reply
//! `seq=N`, N counting the accepted messages of this process, or refused with `--reject-if`.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use anyhow::bail;
use base64::Engine;
use bytes::Bytes;
use tether_client::{Control, Report, Role, Status};
use tether_proto::heartbeat::ClientEvent;
use tether_proto::{Frame, UpstreamAnswer, UpstreamDeliver};

use crate::login::{self, BackendLogin, Early, Peer};
use crate::show;

/// The reply of a refused message.
const REJECTED: &str = "rejected";

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    peer: Peer<BackendLogin>,
    /// Refuse every message whose payload contains TEXT (answer accepted = false with the
    /// reply "rejected"), to see a refusal reach the client.
    #[arg(long, value_name = "TEXT")]
    reject_if: Option<String>,
    /// Answer each message this many milliseconds after it arrived (above the server's
    /// `upstream.timeout_ms` the client gets `timed_out` instead).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    delay_ms: u64,
    /// Print one JSON object per message (id, user, device, session_id, client_id, payload as
    /// UTF-8 with invalid bytes replaced, payload_b64 when it is not UTF-8, accepted, reply)
    /// instead of a line of text.
    #[arg(long)]
    json: bool,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let credentials = args.peer.login.credentials()?;
    let mut driver = args
        .peer
        .start(credentials, String::new(), Role::UpstreamBackend)?;
    if let Some(source) = args.peer.login.token_source()? {
        driver.set_token_source(source);
    }
    let mut backend = Answering {
        reject_if: args.reject_if,
        delay: Duration::from_millis(args.delay_ms),
        json: args.json,
        accepted: 0,
        later: VecDeque::new(),
        end: None,
    };
    let status = driver.run_app(login::until(args.duration), |control, s, report| {
        backend.on_report(control, s, report)
    })?;
    match backend.end {
        Some(early) => Err(early.error(args.peer.connect.server)),
        None if status.pongs == 0 && status.main_losses == 0 && !status.online => {
            bail!("never got online with {}", args.peer.connect.server)
        }
        None => Ok(()),
    }
}

/// The observer's state.
struct Answering {
    /// Refuse payloads that contain this.
    reject_if: Option<String>,
    /// How long after its arrival each message is answered.
    delay: Duration,
    /// JSON lines instead of text.
    json: bool,
    /// Messages accepted so far: the last `seq=N` replied.
    accepted: u64,
    /// Answers waiting for their moment, in the order they are due.
    later: VecDeque<(Instant, UpstreamAnswer)>,
    /// Why the run ended early, once it did.
    end: Option<Early>,
}

impl Answering {
    fn on_report(&mut self, control: &mut Control, s: &Status, report: &Report) -> ControlFlow<()> {
        if self.end.is_some() {
            // Reports of the turn in which the run ended: the outcome stands.
            return ControlFlow::Break(());
        }
        if let Some(early) = Early::of(report, s) {
            self.end = Some(early);
            return ControlFlow::Break(());
        }
        match report {
            // The ids of waiting answers belong to the connection that is gone.
            Report::Event(ClientEvent::Offline) => self.later.clear(),
            Report::Event(ClientEvent::Received(Frame::UpstreamDeliver(d))) => {
                let answer = self.answer(d);
                println!("{}", self.line(d, &answer));
                if self.delay.is_zero() {
                    control.send(Frame::UpstreamAnswer(answer));
                } else {
                    self.later.push_back((Instant::now() + self.delay, answer));
                }
            }
            _ => {}
        }
        let now = Instant::now();
        while let Some((due, _)) = self.later.front() {
            if *due > now {
                control.wake_at(*due);
                break;
            }
            let (_, answer) = self.later.pop_front().expect("front exists");
            control.send(Frame::UpstreamAnswer(answer));
        }
        ControlFlow::Continue(())
    }

    /// Accepted with the next `seq=N`, or refused when the payload contains `--reject-if`.
    fn answer(&mut self, d: &UpstreamDeliver) -> UpstreamAnswer {
        let text = String::from_utf8_lossy(&d.payload);
        if self
            .reject_if
            .as_deref()
            .is_some_and(|needle| text.contains(needle))
        {
            return UpstreamAnswer {
                id: d.id,
                accepted: false,
                reply: Bytes::from_static(REJECTED.as_bytes()),
            };
        }
        self.accepted += 1;
        UpstreamAnswer {
            id: d.id,
            accepted: true,
            reply: format!("seq={}", self.accepted).into(),
        }
    }

    /// The line printed for `d` answered with `answer`.
    fn line(&self, d: &UpstreamDeliver, answer: &UpstreamAnswer) -> String {
        let verdict = if answer.accepted {
            "accepted"
        } else {
            REJECTED
        };
        if !self.json {
            return format!(
                "from {} session {} client_id {}: {} -> {verdict} {}",
                show::sender(&d.user, &d.device),
                d.session_id,
                d.client_id,
                show::payload(&d.payload),
                show::payload(&answer.reply),
            );
        }
        let mut object = serde_json::json!({
            "id": d.id,
            "user": d.user,
            "device": d.device,
            "session_id": d.session_id,
            "client_id": d.client_id,
            "payload": String::from_utf8_lossy(&d.payload),
            "accepted": answer.accepted,
            "reply": String::from_utf8_lossy(&answer.reply),
        });
        if std::str::from_utf8(&d.payload).is_err() {
            object["payload_b64"] = base64::engine::general_purpose::STANDARD
                .encode(&d.payload)
                .into();
        }
        object.to_string()
    }
}
