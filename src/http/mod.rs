//! The HTTP service: actix-web's `App` on actix-http, as `HttpServer` serves it, except for
//! WebSocket handshakes, which go to [`handover`], and for what a connection may hold before it
//! has proved anything: [`admission`] caps connections as they are accepted, [`pacing`] hands
//! actix-http one request at a time, [`body`] puts every request body under a deadline.
//!
//! The app answers a handshake like any request. When the answer is a session's `101` (a
//! [`Handover`] in its extensions), the `101` is written here and the socket becomes the
//! session's; actix-http's connection, with its two 8 KiB buffers, ends there. Served the usual
//! way, a WebSocket kept those buffers for its whole life: half of an idle connection's memory.

pub mod admission;
pub mod body;
pub mod pacing;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_codec::{Encoder, Framed};
use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::h1::{self, Message};
use actix_http::{
    ConnectionType, Extensions, HttpService, KeepAlive, Protocol, Request, Response, StatusCode,
};
use actix_server::GracefulShutdownSignal;
use actix_service::{
    apply_fn_factory, fn_factory, fn_service, map_config, IntoServiceFactory, Service,
    ServiceFactory, ServiceFactoryExt,
};
use actix_web::dev::AppConfig;
use actix_web::rt::net::TcpStream;
use actix_web::web::{Bytes, BytesMut};
use futures_util::future::{ready, Either, Ready};

use self::admission::{Admission, Admitted, Requests, Ticket};
use crate::ws::{Handover, Writer};

/// `HttpServer`'s defaults.
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The service for one worker's connections; `make_app` builds the app (twice per worker: once
/// for requests, once for handshakes). `shutdown` tells idle keep-alive connections to close
/// when the server stops, as `HttpServer` does; otherwise they would hold the stop until they
/// time out. `admission` is shared by every worker.
pub fn service<F, I, S, B>(
    make_app: F,
    addr: SocketAddr,
    shutdown: GracefulShutdownSignal,
    admission: Arc<Admission>,
) -> impl ServiceFactory<
    TcpStream,
    Config = (),
    Response = (),
    Error = actix_http::error::DispatchError,
    InitError = (),
>
where
    F: Fn() -> I + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig, InitError = ()> + 'static,
    S::Error: Into<actix_web::Error>,
    S::Response: Into<Response<B>>,
    S::Service: 'static,
    <S::Service as Service<Request>>::Future: 'static,
    B: MessageBody + 'static,
{
    // The app's configuration is its default (host `localhost:8080`): it only informs
    // `ConnectionInfo` without a Host header and `url_for`, neither of which Switchboard uses.
    // Each request tells its connection that it has arrived, and its response's body that it
    // has been answered ([`admission::Requests`]).
    let app = apply_fn_factory(make_app().into_factory(), |req: Request, app| {
        let requests = arrived(&req);
        let response = app.call(req);
        async move {
            let response: Response<BoxBody> = match response.await {
                Ok(response) => response.into().map_into_boxed_body(),
                Err(e) => e.into().error_response().into(),
            };
            Ok(response.map_body(|_, body| Answered {
                body,
                _requests: requests.map(Answering),
            }))
        }
    })
    .map_err(|e| e.into().error_response());
    // Handshakes: the app, with `handover` around it.
    let handshakes = fn_factory(move || {
        let app = make_app().into_factory().new_service(AppConfig::default());
        async move {
            let app = Rc::new(app.await?);
            Ok::<_, ()>(fn_service(move |(req, framed)| {
                handover(app.clone(), req, framed)
            }))
        }
    });
    let http = HttpService::build()
        // How `HttpServer` wires it (the builder method is hidden from actix-http's docs).
        .graceful_shutdown_signal(move || {
            let shutdown = shutdown.clone();
            async move { shutdown.notified().await }
        })
        .keep_alive(KeepAlive::default())
        .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
        .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
        .local_addr(addr)
        // So that the connection's requests can tell it when they arrive and are answered.
        .on_connect_ext(|io: &Admitted, data: &mut Extensions| {
            data.insert(io.ticket().requests());
        })
        .upgrade(handshakes)
        .finish(map_config(app, |_| AppConfig::default()));
    fn_factory(move || {
        let (admission, http) = (admission.clone(), http.new_service(()));
        async move {
            let http = http.await?;
            Ok(Admit { admission, http })
        }
    })
}

/// Admits an accepted connection and serves it over HTTP, or closes it at once.
struct Admit<H> {
    admission: Arc<Admission>,
    http: H,
}

impl<H> Service<TcpStream> for Admit<H>
where
    H: Service<(Admitted, Protocol, Option<SocketAddr>), Response = ()>,
{
    type Response = ();
    type Error = H::Error;
    type Future = Either<Ready<Result<(), H::Error>>, H::Future>;

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx)
    }

    fn call(&self, stream: TcpStream) -> Self::Future {
        let peer = stream.peer_addr().ok();
        match self.admission.admit(stream) {
            Ok(admitted) => Either::Right(self.http.call((admitted, Protocol::Http1, peer))),
            // Refused: the stream is dropped, so closed, unread.
            Err(_) => Either::Left(ready(Ok(()))),
        }
    }
}

/// A request's head has arrived whole on its connection; its connection's [`Requests`].
fn arrived(req: &Request) -> Option<Rc<Requests>> {
    let requests = req.conn_data::<Rc<Requests>>()?;
    requests.arrived(has_body(req));
    Some(requests.clone())
}

/// Whether a body follows the request's head (actix-http has refused a malformed length).
fn has_body(req: &Request) -> bool {
    let headers = &req.head().headers;
    headers.contains_key(actix_http::header::TRANSFER_ENCODING)
        || headers
            .get(actix_http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// A response's body, which tells its connection when it has been sent: dropped by actix-http
/// once written (unpolled, if empty).
struct Answered {
    body: BoxBody,
    _requests: Option<Answering>,
}

struct Answering(Rc<Requests>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.answered();
    }
}

impl MessageBody for Answered {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

/// Answers a handshake: the app's `101` and then the session's output on the socket, or the
/// app's refusal, after which the connection closes.
///
/// This future lives inline in the connection's task for the connection's life, and every
/// connection pays for its size: so the app's future is boxed (needed only until it answers),
/// and only the [`Writer`] is held across the last await.
async fn handover<S, B>(
    app: Rc<S>,
    req: Request,
    framed: Framed<Admitted, h1::Codec>,
) -> Result<(), actix_web::Error>
where
    S: Service<Request>,
    S::Error: Into<actix_web::Error>,
    S::Response: Into<Response<B>>,
    B: MessageBody + 'static,
{
    arrived(&req);
    let response: Response<BoxBody> = match Box::pin(app.call(req)).await {
        Ok(response) => response.into().map_into_boxed_body(),
        Err(e) => e.into().error_response().into(),
    };
    let (mut head, body) = response.into_parts();
    let handover = match head.status() {
        StatusCode::SWITCHING_PROTOCOLS => head.extensions_mut().remove::<Handover>(),
        _ => None,
    };
    let (writer, ticket) = match handover {
        Some(handover) => upgraded(handover, head, body, framed)?,
        None => Box::pin(refused(head, body, framed)).await?,
    };
    writer.run().await;
    // The connection counted under its address's cap until now.
    drop(ticket);
    Ok(())
}

/// The `101` written, the socket given to the session.
fn upgraded(
    handover: Handover,
    head: Response<()>,
    body: BoxBody,
    framed: Framed<Admitted, h1::Codec>,
) -> Result<(Writer, Ticket), actix_web::Error> {
    let mut parts = framed.into_parts();
    let mut out = BytesMut::new();
    parts
        .codec
        .encode(Message::Item((head, BodySize::Stream)), &mut out)?;
    let (socket, ticket) = parts.io.into_parts();
    let writer = handover.attach(socket, parts.read_buf.freeze(), out.freeze(), body);
    Ok((writer, ticket))
}

/// The app's refusal, whole, with the connection closing after it: a client whose handshake
/// was refused does not go on to other requests on it.
async fn refused(
    mut head: Response<()>,
    body: BoxBody,
    framed: Framed<Admitted, h1::Codec>,
) -> Result<(Writer, Ticket), actix_web::Error> {
    let body = actix_http::body::to_bytes(body)
        .await
        .map_err(|e| actix_web::error::ErrorInternalServerError(e.to_string()))?;
    head.head_mut().set_connection_type(ConnectionType::Close);
    let mut parts = framed.into_parts();
    let mut out = BytesMut::new();
    let length = BodySize::Sized(body.len() as u64);
    parts
        .codec
        .encode(Message::Item((head, length)), &mut out)?;
    out.extend_from_slice(&body);
    let nothing_more = BoxBody::new(());
    let (socket, ticket) = parts.io.into_parts();
    Ok((
        Writer::new(Rc::new(socket), out.freeze(), nothing_more),
        ticket,
    ))
}
