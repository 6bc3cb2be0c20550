//! A minimal authoritative DNS server on a loopback UDP port: answers SRV, A and AAAA
//! from a table the test fills, NXDOMAIN for names it does not know.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

#[derive(Default)]
struct Zone {
    srv: HashMap<String, Vec<(u16, u16, u16, String)>>,
    addrs: HashMap<String, Vec<IpAddr>>,
}

pub struct TestDns {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    task: tokio::task::JoinHandle<()>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl TestDns {
    /// Listens on `ip` (a loopback address), port chosen by the OS.
    pub async fn start(ip: &str) -> TestDns {
        let socket = UdpSocket::bind((ip.parse::<IpAddr>().unwrap(), 0))
            .await
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone::default()));
        let z = zone.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let reply = answer(&z, &query);
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        TestDns { addr, zone, task }
    }

    pub fn add_srv(&self, name: &str, priority: u16, weight: u16, port: u16, target: &str) {
        self.zone
            .lock()
            .unwrap()
            .srv
            .entry(key(name))
            .or_default()
            .push((priority, weight, port, target.to_string()));
    }

    pub fn add_addr(&self, host: &str, ip: &str) {
        self.zone
            .lock()
            .unwrap()
            .addrs
            .entry(key(host))
            .or_default()
            .push(ip.parse().unwrap());
    }

    /// Replaces every record of `name` (SRV and addresses).
    pub fn clear(&self, name: &str) {
        let mut z = self.zone.lock().unwrap();
        z.srv.remove(&key(name));
        z.addrs.remove(&key(name));
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(zone: &Mutex<Zone>, query: &Message) -> Message {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    let zone = zone.lock().unwrap();
    let mut known = false;
    for q in &query.queries {
        reply.add_query(q.clone());
        let name = key(&q.name().to_ascii());
        let owner = q.name().clone();
        known |= zone.srv.contains_key(&name) || zone.addrs.contains_key(&name);
        match q.query_type() {
            RecordType::SRV => {
                for (p, w, port, target) in zone.srv.get(&name).into_iter().flatten() {
                    let target = Name::from_ascii(format!("{}.", key(target))).unwrap();
                    reply.add_answer(Record::from_rdata(
                        owner.clone(),
                        1,
                        RData::SRV(SRV::new(*p, *w, *port, target)),
                    ));
                }
            }
            RecordType::A => {
                for ip in zone.addrs.get(&name).into_iter().flatten() {
                    if let IpAddr::V4(v4) = ip {
                        reply.add_answer(Record::from_rdata(owner.clone(), 1, RData::A(A(*v4))));
                    }
                }
            }
            RecordType::AAAA => {
                for ip in zone.addrs.get(&name).into_iter().flatten() {
                    if let IpAddr::V6(v6) = ip {
                        reply.add_answer(Record::from_rdata(
                            owner.clone(),
                            1,
                            RData::AAAA(AAAA(*v6)),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    if !known {
        reply.metadata.response_code = ResponseCode::NXDomain;
    }
    reply
}
