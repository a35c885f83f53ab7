//! `tether-client upstream`: log in as a user, send each line of stdin (or each `--message`)
//! to the app's backend as an `Upstream` frame with client ids 1, 2, 3..., print each
//! `UpstreamResult` as it arrives, and exit once the input ended and every result came.
//!
//! A thread reads the input and hands it over through a channel, ringing the driver's doorbell;
//! the driver's thread sends, keeps the connection alive and prints.

use std::collections::{BTreeSet, VecDeque};
use std::io::{self, BufRead};
use std::ops::ControlFlow;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use tether_client::{Control, Doorbell, Report, Role, Status};
use tether_proto::heartbeat::ClientEvent;
use tether_proto::{Frame, Upstream, UpstreamResult};

use crate::login::{self, ClientLogin, Early, Peer};
use crate::show;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    peer: Peer<ClientLogin>,
    /// Send this text instead of reading lines from stdin (repeatable, sent in order).
    #[arg(long = "message", value_name = "TEXT")]
    messages: Vec<String>,
    /// Send N messages without reading stdin: the --message texts in turn, or "message 1",
    /// "message 2", ... without any.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Send at most this many messages per second (0: no limit). The server closes a client
    /// that sends more frames than its `limits.client_frame_rate` (1000 a second by default).
    #[arg(long, value_name = "PER_SEC", default_value_t = 100)]
    rate: u32,
    /// Messages waiting for their results at once; later ones wait their turn. The server
    /// refuses more than its `upstream.max_in_flight_per_connection` (64 by default).
    #[arg(long, value_name = "N", default_value_t = 16)]
    window: usize,
    /// Once the input ended, give up when nothing was sent and no result came for this long.
    /// Above the server's `upstream.timeout_ms` (10 s by default), which answers `timed_out`.
    #[arg(long, value_name = "MS", default_value_t = 15_000)]
    wait_ms: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let credentials = args.peer.login.credentials("upstream")?;
    let mut driver = args
        .peer
        .start(credentials, String::new(), Role::Foreground)?;
    if let Some(source) = args.peer.login.token_source("upstream")? {
        driver.set_token_source(source);
    }
    let (tx, rx) = mpsc::channel();
    let bell = driver.doorbell()?;
    let texts = scripted(&args);
    let pace = (args.rate > 0).then(|| Duration::from_secs(1) / args.rate);
    std::thread::spawn(move || read_input(texts, pace, &tx, &bell));
    let mut sender = Sending {
        input: rx,
        queued: VecDeque::new(),
        next_id: 1,
        waiting: BTreeSet::new(),
        window: args.window.max(1),
        wait: Duration::from_millis(args.wait_ms),
        input_ended: false,
        deadline: None,
        online: false,
        end: None,
    };
    driver.run_app(login::until(None), |control, s, report| {
        sender.on_report(control, s, report)
    })?;
    let waiting = sender.waiting_ids();
    match sender.end {
        Some(End::Done) | None => Ok(()),
        Some(End::Early(early)) => bail!("{}{waiting}", early.error(args.peer.connect.server)),
        Some(End::GaveUp) if !sender.online => bail!(
            "never got online with {} in {} ms{waiting}",
            args.peer.connect.server,
            args.wait_ms
        ),
        Some(End::GaveUp) => bail!("no result for {} ms{waiting}", args.wait_ms),
    }
}

/// The messages to send instead of stdin's lines, when the flags name any, made as they are
/// sent.
fn scripted(args: &Args) -> Option<Texts> {
    let count = match (args.count, args.messages.len()) {
        (None, 0) => return None,
        (None, n) => n as u64,
        (Some(count), _) => count,
    };
    let messages = args.messages.clone();
    Some(Box::new((0..count).map(move |i| match messages.len() {
        0 => format!("message {}", i + 1),
        n => messages[(i % n as u64) as usize].clone(),
    })))
}

/// Scripted messages.
type Texts = Box<dyn Iterator<Item = String> + Send>;

/// What the input thread hands over.
enum Input {
    /// One message's bytes.
    Message(Bytes),
    /// No more messages.
    End,
}

/// The input thread: `texts`, or stdin's lines without their line ends, at most one per
/// `pace`, then `End`. Stops early once the receiver is gone.
fn read_input(texts: Option<Texts>, pace: Option<Duration>, tx: &Sender<Input>, bell: &Doorbell) {
    let mut next = Instant::now();
    let mut give = |bytes: Vec<u8>| {
        if let Some(pace) = pace {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            next = next.max(Instant::now()) + pace;
        }
        let sent = tx.send(Input::Message(bytes.into())).is_ok();
        bell.ring();
        sent
    };
    match texts {
        Some(texts) => {
            for text in texts {
                if !give(text.into_bytes()) {
                    return;
                }
            }
        }
        None => {
            let mut stdin = io::stdin().lock();
            let mut line = Vec::new();
            loop {
                line.clear();
                match stdin.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                if !give(line.clone()) {
                    return;
                }
            }
        }
    }
    let _ = tx.send(Input::End);
    bell.ring();
}

/// Why the run ended.
#[derive(Clone, Debug)]
enum End {
    /// The input ended and every message has its result.
    Done,
    /// The server speaks version 1 only, or closed the connection for good.
    Early(Early),
    /// Nothing happened for `--wait-ms` after the input ended.
    GaveUp,
}

/// The observer's state: messages read, sent and answered.
struct Sending {
    /// From the input thread.
    input: Receiver<Input>,
    /// Read but not sent yet (the window is full).
    queued: VecDeque<Bytes>,
    /// The next message's client id.
    next_id: u64,
    /// Client ids sent and not answered yet.
    waiting: BTreeSet<u64>,
    /// Most messages waiting at once.
    window: usize,
    /// How long to wait for progress once the input ended.
    wait: Duration,
    /// The input thread sent `End`.
    input_ended: bool,
    /// Give up at this moment unless something happens first (set once the input ended).
    deadline: Option<Instant>,
    /// The main connection was logged in at least once.
    online: bool,
    /// Why the run ended, once it did.
    end: Option<End>,
}

impl Sending {
    fn on_report(&mut self, control: &mut Control, s: &Status, report: &Report) -> ControlFlow<()> {
        if self.end.is_some() {
            // Reports of the turn in which the run ended: the outcome stands.
            return ControlFlow::Break(());
        }
        if let Some(early) = Early::of(report, s) {
            self.end = Some(End::Early(early));
            return ControlFlow::Break(());
        }
        let mut progress = false;
        match report {
            Report::Event(ClientEvent::Online { .. }) => self.online = true,
            Report::Event(ClientEvent::Received(Frame::UpstreamResult(r))) => {
                println!("{}", result_line(r));
                self.waiting.remove(&r.client_id);
                progress = true;
            }
            Report::Wake => {
                while let Ok(input) = self.input.try_recv() {
                    match input {
                        Input::Message(bytes) => self.queued.push_back(bytes),
                        Input::End => self.input_ended = true,
                    }
                }
            }
            _ => {}
        }
        while self.waiting.len() < self.window {
            let Some(payload) = self.queued.pop_front() else {
                break;
            };
            let client_id = self.next_id;
            self.next_id += 1;
            self.waiting.insert(client_id);
            control.send(Frame::Upstream(Upstream {
                client_id,
                flags: 0,
                payload,
            }));
            progress = true;
        }
        if !self.input_ended {
            return ControlFlow::Continue(());
        }
        if self.queued.is_empty() && self.waiting.is_empty() {
            self.end = Some(End::Done);
            return ControlFlow::Break(());
        }
        let now = Instant::now();
        match self.deadline {
            Some(deadline) if now >= deadline && !progress => {
                self.end = Some(End::GaveUp);
                return ControlFlow::Break(());
            }
            Some(_) if !progress => {}
            _ => self.deadline = Some(now + self.wait),
        }
        control.wake_at(self.deadline.expect("set above"));
        ControlFlow::Continue(())
    }

    /// `: upstream 2, 3 still waiting for a result (4 not sent)`, or nothing.
    fn waiting_ids(&self) -> String {
        let mut text = String::new();
        if !self.waiting.is_empty() {
            let ids: Vec<String> = self.waiting.iter().map(u64::to_string).collect();
            text = format!(": upstream {} still waiting for a result", ids.join(", "));
        }
        if !self.queued.is_empty() {
            let sep = if text.is_empty() { ": " } else { ", " };
            text += &format!("{sep}{} more not sent", self.queued.len());
        }
        text
    }
}

/// `upstream 1: accepted, reply "seq=1"`, `upstream 3: refused no_backend`.
fn result_line(r: &UpstreamResult) -> String {
    let mut line = format!(
        "upstream {}: {}",
        r.client_id,
        show::upstream_status(r.status)
    );
    if !r.reply.is_empty() {
        line += &format!(", reply {}", show::payload(&r.reply));
    }
    line
}
