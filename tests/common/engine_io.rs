//! Socket.IO clients written for the tests, packet by packet: on Engine.IO long-polling by plain
//! HTTP ([`Poller`]), and on a WebSocket from the start ([`EngineSocket`]); for the transport's own
//! tests and for nodes started as processes.

use serde_json::{json, Value};

use super::Api;

pub async fn get(api: &Api, query: &str) -> (u16, String) {
    let response = reqwest::get(api.http_url(&format!("/socket.io/?{query}")))
        .await
        .expect("GET /socket.io/");
    (response.status().as_u16(), response.text().await.unwrap())
}

pub async fn post(api: &Api, query: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(api.http_url(&format!("/socket.io/?{query}")))
        .body(body)
        .send()
        .await
        .expect("POST /socket.io/");
    (response.status().as_u16(), response.text().await.unwrap())
}

pub fn error_code(body: &str) -> Value {
    serde_json::from_str::<Value>(body).unwrap_or(Value::Null)["error"]["code"].clone()
}

/// A polling connection's `sid`, from its open packet.
pub async fn open(api: &Api) -> String {
    let (status, body) = get(api, "EIO=4&transport=polling").await;
    assert_eq!(status, 200, "{body}");
    let open: Value =
        serde_json::from_str(body.strip_prefix('0').expect("an open packet")).unwrap();
    assert_eq!(open["upgrades"], json!(["websocket"]));
    assert!(open["pingInterval"].as_u64().unwrap() > 0);
    open["sid"].as_str().unwrap().to_owned()
}

/// A Socket.IO client on long-polling, packet by packet.
pub struct Poller<'a> {
    api: &'a Api,
    query: String,
    /// Packets polled and not yet looked at.
    pending: std::collections::VecDeque<String>,
}

impl<'a> Poller<'a> {
    /// Opens a connection and CONNECTs with `auth`; answers the CONNECT answer's data.
    pub async fn connect(api: &'a Api, auth: Value) -> (Self, Value) {
        let query = format!("EIO=4&transport=polling&sid={}", open(api).await);
        assert_eq!(post(api, &query, format!("40{auth}")).await.0, 200);
        let mut poller = Self {
            api,
            query,
            pending: Default::default(),
        };
        let connected = poller.next().await;
        let connected = connected.strip_prefix("40").expect("a CONNECT answer");
        (poller, serde_json::from_str(connected).unwrap())
    }

    /// Posts `body` (packets joined by the separator); fails the test unless it is taken.
    pub async fn post(&self, body: &str) {
        let (status, answer) = post(self.api, &self.query, body.to_owned()).await;
        assert_eq!(status, 200, "{answer}");
    }

    /// The next packet other than pings and noops.
    pub async fn next(&mut self) -> String {
        loop {
            if let Some(packet) = self.pending.pop_front() {
                return packet;
            }
            let (status, body) = get(self.api, &self.query).await;
            assert_eq!(status, 200, "{body}");
            let packets = body.split('\x1e').filter(|p| *p != "2" && *p != "6");
            self.pending.extend(packets.map(str::to_owned));
        }
    }
}

/// An HTTP client whose connections come from `source`, a loopback address of the test's own:
/// the server counts per client address.
pub fn client_from(source: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(source))
        .build()
        .unwrap()
}

/// `GET /socket.io/?{query}` by `client`: the status, the `Retry-After` header and the body.
pub async fn get_by(
    client: &reqwest::Client,
    api: &Api,
    query: &str,
) -> (u16, Option<String>, String) {
    let response = client
        .get(api.http_url(&format!("/socket.io/?{query}")))
        .send()
        .await
        .expect("GET /socket.io/");
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().to_owned());
    (
        response.status().as_u16(),
        retry_after,
        response.text().await.unwrap(),
    )
}

/// The Engine.IO packets of a poll's answer.
pub fn packets(body: &str) -> Vec<&str> {
    body.split('\x1e').collect()
}

/// The data of a CONNECT_ERROR packet (`44{…}`): `message`, and `data.code`.
pub fn connect_error(packet: &str) -> Value {
    let data = packet
        .strip_prefix("44")
        .unwrap_or_else(|| panic!("a CONNECT_ERROR: {packet}"));
    serde_json::from_str(data).unwrap()
}

/// An Engine.IO connection on a WebSocket from the start (`transport=websocket`).
pub struct EngineSocket {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl EngineSocket {
    /// Opens one; answers it with its open packet's data.
    pub async fn open(api: &Api) -> (Self, Value) {
        let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", api.addr);
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("a Socket.IO WebSocket");
        let mut socket = Self { ws };
        let open = socket.next(super::WAIT).await.expect("an open packet");
        let open = serde_json::from_str(open.strip_prefix('0').expect("an open packet")).unwrap();
        (socket, open)
    }

    /// Opens one and CONNECTs with `auth`; answers the CONNECT answer's data.
    pub async fn connect(api: &Api, auth: &Value) -> (Self, Value) {
        let (mut socket, _) = Self::open(api).await;
        socket.send(&format!("40{auth}")).await;
        let connected = socket.next_packet().await;
        let connected = connected.strip_prefix("40").expect("a CONNECT answer");
        (socket, serde_json::from_str(connected).unwrap())
    }

    pub async fn send(&mut self, packet: &str) {
        use futures_util::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::text(packet))
            .await
            .expect("send a packet");
    }

    /// The next packet within `wait` (pings included); `None` once the socket is closed. Fails
    /// the test when nothing comes.
    pub async fn next(&mut self, wait: std::time::Duration) -> Option<String> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let message = tokio::time::timeout(wait, self.ws.next())
                .await
                .expect("a packet or the close in time");
            match message {
                Some(Ok(Message::Text(text))) => return Some(text.to_string()),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next packet other than pings, which it answers as a client does; fails the test when
    /// the socket closes or nothing comes within [`WAIT`](super::WAIT).
    pub async fn next_packet(&mut self) -> String {
        loop {
            match self.next(super::WAIT).await {
                Some(ping) if ping == "2" => self.send("3").await,
                Some(packet) => return packet,
                None => panic!("the connection ended"),
            }
        }
    }
}
