//! `tether-client watch`: run one heartbeat client against a server, print (and acknowledge)
//! every push and message it receives, and print its interval as it learns the network's NAT
//! timeout.

use std::io;
use std::ops::ControlFlow;

use anyhow::bail;
use tether_client::{Report, Role, Status};
use tether_proto::heartbeat::ClientEvent;
use tether_proto::{Frame, PushAck};

use crate::login::{self, ClientLogin, Early, Peer};
use crate::show;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    peer: Peer<ClientLogin>,
    /// Network key the learned interval is kept under ("" for none).
    #[arg(long, default_value = "watch")]
    network_key: String,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let credentials = args.peer.login.credentials("watch")?;
    let mut driver = args
        .peer
        .start(credentials, args.network_key, Role::Learner)?;
    if let Some(source) = args.peer.login.token_source("watch")? {
        driver.set_token_source(source);
    }
    println!("{}", Status::HEADER);
    let mut shown: Option<Status> = None;
    let mut end = None;
    let status = driver.run_app(login::until(args.duration), |control, s, report| {
        if end.is_some() {
            return ControlFlow::Break(());
        }
        if let Some(early) = login::tell_life(report, s, &mut io::stdout()) {
            end = Some(early);
            return ControlFlow::Break(());
        }
        // Every push and message is acknowledged once printed: that is what "handled" means
        // here, and what a backend's `want_ack` push waits for.
        match report {
            Report::Event(ClientEvent::Received(Frame::Push(p))) => {
                println!("push {}: {}", p.id, show::payload(&p.payload));
                control.send(Frame::PushAck(PushAck { id: p.id }));
            }
            Report::Event(ClientEvent::Received(Frame::Message(m))) => {
                println!(
                    "message {} from {}: {}",
                    m.id,
                    show::sender(&m.from_user, &m.from_device),
                    show::payload(&m.payload)
                );
                control.send(Frame::PushAck(PushAck { id: m.id }));
            }
            _ => {}
        }
        if shown.as_ref().map_or(true, |last| s.differs_visibly(last)) {
            println!("{s}");
            shown = Some(s.clone());
        }
        ControlFlow::Continue(())
    })?;
    println!("{status}");
    if let Some(early @ Early::Tls(_)) = end {
        return Err(early.error(args.peer.connect.server));
    }
    if !status.online && status.pongs == 0 && status.main_losses == 0 {
        bail!("never got online with {}", args.peer.connect.server);
    }
    Ok(())
}
