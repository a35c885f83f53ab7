//! The upstream scenario's two ends in a worker: clients sending their messages in turn, and
//! the backend sinks that take them (answer at once, time them end to end, and check that each
//! sender's messages arrive in the order it sent them), then the results back at the clients.

use tether_proto::UpstreamStatus;

use super::Worker;
use crate::clock::now_ns;
use crate::conn::State;
use crate::payload;
use crate::stats::hist;

impl Worker {
    /// One upstream message from the next logged-in client in turn (round robin, so each
    /// client sends this worker's rate divided by its clients).
    pub(super) fn upstream_one(&mut self, now: u64) {
        let users = self.job.users as usize;
        let Some(slot) = (0..users.min(8))
            .map(|i| (self.next_sender + i) % users)
            .find(|&s| self.conns[s].state == State::Ready)
        else {
            self.counters.skipped += 1;
            return;
        };
        self.next_sender = (slot + 1) % users;
        let has_result = self.job.protocol.upstream_has_result();
        if has_result && self.inflight.len() >= self.job.max_inflight {
            self.counters.skipped += 1;
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let user = self.user_name(self.job.first_user as usize + slot);
        let body = payload::stamp_seq(now_ns(), self.conns[slot].shard, id, self.job.payload);
        if self.send_with(slot, |wire, out| wire.upstream(id, &user, &body, out)) {
            if has_result {
                self.inflight.insert(id, now);
            }
            self.counters.upstream_sent += 1;
        }
    }

    /// A client's upstream message ended: its result latency, and the outcome by reason.
    pub(super) fn on_upstream_result(&mut self, id: u64, status: UpstreamStatus, now: u64) {
        let key = match status {
            UpstreamStatus::Accepted => {
                self.counters.upstream_accepted += 1;
                "upstream: accepted".to_string()
            }
            UpstreamStatus::Refused(r) => {
                self.counters.upstream_refused += 1;
                format!("upstream: refused {r:?}")
            }
        };
        *self.events.entry(key).or_default() += 1;
        if let Some(sent) = self.inflight.remove(&id) {
            self.hists.record_ns(hist::UPSTREAM_RESULT, sent, now);
        }
    }

    /// A sink received a client's upstream message: its end-to-end latency, the order check
    /// of its sender's sequence (tether's client id, else the payload's), and at once the
    /// answer that accepts it (tether).
    pub(super) fn on_upstream(
        &mut self,
        slot: usize,
        answer: Option<u64>,
        sender: (String, String),
        client_id: Option<u64>,
        payload: &[u8],
        now: u64,
    ) {
        if let Some(id) = answer {
            self.send_with(slot, |wire, out| wire.upstream_answer(id, out));
        }
        self.counters.upstream_received += 1;
        self.sink_last_ns = now;
        if let Some((sent, _)) = payload::parse(payload) {
            self.hists.record_ns(hist::UPSTREAM_E2E, sent, now);
        }
        let Some(seq) = client_id.or_else(|| payload::parse_seq(payload)) else {
            *self
                .errors
                .entry("upstream: message without a sequence number at the sink".into())
                .or_default() += 1;
            return;
        };
        match self.sink_last.get_mut(&sender) {
            Some(last) if seq <= *last => {
                self.counters.upstream_out_of_order += 1;
                *self
                    .errors
                    .entry(
                        "upstream: out of order at the sink (a sender's sequence went back)".into(),
                    )
                    .or_default() += 1;
            }
            Some(last) => *last = seq,
            None => {
                self.sink_last.insert(sender, seq);
            }
        }
    }
}
