//! etcd's `KV/Txn` over native gRPC (HTTP/2, one multiplexed connection per member, over
//! TLS when the members are reached over https), for the one etcd request on the
//! attestation path (the session record's create-only transaction) and the other
//! transactions.
//!
//! Why not the JSON gateway for this one: every gateway request is decoded from JSON,
//! re-sent by the member to itself as a gRPC call and re-encoded, which costs the
//! member about 250 µs of CPU per request (measured: a serializable range through the
//! gateway, etcd 3.4.23, this 2-core machine), about a third of what a 3-member cluster
//! spends on a whole replicated write. The messages are encoded and decoded here by
//! hand (a few fields of `rpc.proto`/`kv.proto`), so the build still needs no `protoc`
//! and no generated code. Over TLS the connection is rustls (aws-lc provider) with ALPN
//! `h2`, the CA and the client certificate that `--etcd-ca`/`--etcd-cert` give the
//! gateway client, and the member's address as the name its certificate must carry.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::types::{EtcdError, Kv};

/// What a transaction compares: `CompareTarget` CREATE (1) or MOD (2), always EQUAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Create,
    Mod,
}

// ---- protobuf, the few fields used ---------------------------------------------------

fn put_varint(b: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        b.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    b.put_u8(v as u8);
}

fn put_tag(b: &mut BytesMut, field: u32, wire: u8) {
    put_varint(b, (u64::from(field) << 3) | u64::from(wire));
}

fn put_bytes(b: &mut BytesMut, field: u32, v: &[u8]) {
    put_tag(b, field, 2);
    put_varint(b, v.len() as u64);
    b.put_slice(v);
}

fn put_int(b: &mut BytesMut, field: u32, v: i64) {
    put_tag(b, field, 0);
    put_varint(b, v as u64);
}

fn put_msg(b: &mut BytesMut, field: u32, m: &BytesMut) {
    put_bytes(b, field, m);
}

/// `TxnRequest{compare: [{result: EQUAL, target, key, create_revision|mod_revision: rev}],
/// success: [{request_put: {key, value, lease}}], failure: [{request_range: {key}}]}`.
pub fn encode_txn(key: &[u8], target: Target, rev: i64, value: &[u8], lease: i64) -> BytesMut {
    let mut cmp = BytesMut::new();
    // result EQUAL is 0, proto3's default: not written.
    put_int(&mut cmp, 2, if target == Target::Create { 1 } else { 2 });
    put_bytes(&mut cmp, 3, key);
    // A oneof member is written even when zero (that is what selects it).
    put_int(&mut cmp, if target == Target::Create { 5 } else { 6 }, rev);
    let mut put = BytesMut::new();
    put_bytes(&mut put, 1, key);
    put_bytes(&mut put, 2, value);
    if lease != 0 {
        put_int(&mut put, 3, lease);
    }
    let mut ok = BytesMut::new();
    put_msg(&mut ok, 2, &put);
    let mut range = BytesMut::new();
    put_bytes(&mut range, 1, key);
    let mut fail = BytesMut::new();
    put_msg(&mut fail, 1, &range);
    let mut txn = BytesMut::new();
    put_msg(&mut txn, 1, &cmp);
    put_msg(&mut txn, 2, &ok);
    put_msg(&mut txn, 3, &fail);
    txn
}

/// One protobuf field: number and value (varint, or the bytes of a length-delimited one).
enum Field<'a> {
    Varint(u32, u64),
    Len(u32, &'a [u8]),
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&c, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(c & 0x7f) << shift;
        if c < 0x80 {
            return Some(v);
        }
    }
    None
}

/// The fields of a message; None when it is malformed (or uses wire types etcd's
/// answers do not).
fn fields(mut b: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let tag = varint(&mut b)?;
        let field = u32::try_from(tag >> 3).ok()?;
        match tag & 7 {
            0 => out.push(Field::Varint(field, varint(&mut b)?)),
            2 => {
                let n = usize::try_from(varint(&mut b)?).ok()?;
                if n > b.len() {
                    return None;
                }
                let (v, rest) = b.split_at(n);
                b = rest;
                out.push(Field::Len(field, v));
            }
            1 => b = b.get(8..)?,
            5 => b = b.get(4..)?,
            _ => return None,
        }
    }
    Some(out)
}

fn decode_kv(b: &[u8]) -> Option<Kv> {
    let mut kv = Kv { key: String::new(), value: Vec::new(), mod_revision: 0, lease: 0 };
    for f in fields(b)? {
        match f {
            Field::Len(1, k) => kv.key = String::from_utf8(k.to_vec()).ok()?,
            Field::Len(5, v) => kv.value = v.to_vec(),
            Field::Varint(3, r) => kv.mod_revision = r as i64,
            Field::Varint(6, l) => kv.lease = l as i64,
            _ => {}
        }
    }
    Some(kv)
}

/// `TxnResponse` → (succeeded, header revision, the first kv of the first range answer).
pub fn decode_txn(b: &[u8]) -> Option<(bool, i64, Option<Kv>)> {
    let (mut ok, mut rev, mut kv) = (false, 0i64, None);
    for f in fields(b)? {
        match f {
            Field::Len(1, header) => {
                for h in fields(header)? {
                    if let Field::Varint(3, r) = h {
                        rev = r as i64;
                    }
                }
            }
            Field::Varint(2, s) => ok = s != 0,
            Field::Len(3, op) if kv.is_none() => {
                for o in fields(op)? {
                    if let Field::Len(1, range) = o {
                        for r in fields(range)? {
                            if let Field::Len(2, k) = r {
                                kv = Some(decode_kv(k)?);
                                break;
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Some((ok, rev, kv))
}

// ---- gRPC over h2 ---------------------------------------------------------------------

/// One member's HTTP/2 connection, made on first use and again after it fails.
pub struct Channel {
    endpoint: String,
    /// Over TLS: the client configuration and the name the member's certificate must have.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    conn: tokio::sync::Mutex<Option<h2::client::SendRequest<Bytes>>>,
}

/// The TLS client configuration for gRPC to the members: only `ca_pem`'s certificates
/// are trusted, `client_pem` (certificate chain and key, PEM) is presented when given,
/// and ALPN offers `h2` (etcd serves gRPC over TLS only on HTTP/2).
pub fn tls_config(ca_pem: &[u8], client_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, EtcdError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        let c = c.map_err(|e| EtcdError::Setup(format!("etcd CA certificate: {e}")))?;
        roots.add(c).map_err(|e| EtcdError::Setup(format!("etcd CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(EtcdError::Setup("etcd CA file holds no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EtcdError::Setup(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    let mut cfg = match client_pem {
        None => b.with_no_client_auth(),
        Some(pem) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<_, _>>()
                .map_err(|e| EtcdError::Setup(format!("etcd client certificate: {e}")))?;
            if chain.is_empty() {
                return Err(EtcdError::Setup("etcd client certificate file holds no certificate".into()));
            }
            let key = PrivateKeyDer::from_pem_slice(pem)
                .map_err(|e| EtcdError::Setup(format!("etcd client key: {e}")))?;
            b.with_client_auth_cert(chain, key)
                .map_err(|e| EtcdError::Setup(format!("etcd client certificate/key: {e}")))?
        }
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// The HTTP/2 handshake over `io` (TCP, or TLS over it); a task of its own drives the
/// connection until it closes.
async fn h2_over<T>(
    io: T,
    endpoint: &str,
    timeout: Duration,
) -> Result<h2::client::SendRequest<Bytes>, EtcdError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let failed = |m: String| grpc_err(endpoint, true, 0, m);
    let (send, conn) = tokio::time::timeout(timeout, h2::client::handshake(io))
        .await
        .map_err(|_| failed("HTTP/2 handshake timed out".into()))?
        .map_err(|e| failed(format!("HTTP/2 handshake: {e}")))?;
    let endpoint = endpoint.to_string();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%endpoint, error = %report::Line(&e), "etcd gRPC connection closed");
        }
    });
    Ok(send)
}

/// The host part of `host:port` (`[v6]:port` too) as a TLS server name.
fn server_name(endpoint: &str) -> Result<ServerName<'static>, EtcdError> {
    let host = endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| EtcdError::Setup(format!("etcd endpoint {endpoint:?} is not a TLS server name: {e}")))
}

/// `code`: the gRPC status (0 for a failure of the connection itself).
fn grpc_err(endpoint: &str, retriable: bool, code: u32, message: String) -> EtcdError {
    // 503 is what `EtcdError::retriable` moves to the next member on.
    let status = if retriable { 503 } else { 400 };
    EtcdError::Status { endpoint: endpoint.to_string(), status, code, message }
}

impl Channel {
    /// A channel to `endpoint` (HOST:PORT), over TLS with `tls`.
    pub fn new(endpoint: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Self, EtcdError> {
        let tls = match tls {
            Some(cfg) => Some((tokio_rustls::TlsConnector::from(cfg), server_name(endpoint)?)),
            None => None,
        };
        Ok(Self { endpoint: endpoint.to_string(), tls, conn: tokio::sync::Mutex::new(None) })
    }

    async fn sender(&self, connect_timeout: Duration) -> Result<h2::client::SendRequest<Bytes>, EtcdError> {
        let mut slot = self.conn.lock().await;
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let unreachable = |m: String| grpc_err(&self.endpoint, true, 0, m);
        let tcp = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(&self.endpoint))
            .await
            .map_err(|_| unreachable("connect timed out".into()))?
            .map_err(|e| unreachable(format!("connect: {e}")))?;
        tcp.set_nodelay(true).map_err(|e| unreachable(format!("connect: {e}")))?;
        let send = match &self.tls {
            None => h2_over(tcp, &self.endpoint, connect_timeout).await?,
            Some((connector, name)) => {
                // Either failure moves on to the next member, as an unreachable one does:
                // a member whose certificate is wrong may be the only one.
                let tls = tokio::time::timeout(connect_timeout, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| unreachable("TLS handshake timed out".into()))?
                    .map_err(|e| unreachable(format!("TLS handshake: {e}")))?;
                if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err(grpc_err(
                        &self.endpoint,
                        false,
                        0,
                        "TLS: the member did not agree to HTTP/2 (ALPN h2)".into(),
                    ));
                }
                h2_over(tls, &self.endpoint, connect_timeout).await?
            }
        };
        *slot = Some(send.clone());
        Ok(send)
    }

    async fn drop_conn(&self) {
        *self.conn.lock().await = None;
    }

    /// One unary call: `method` is e.g. "/etcdserverpb.KV/Txn"; the answer's message bytes.
    /// `token`: the etcd auth token (sent as gRPC metadata `token`, as etcd's clients do).
    pub async fn unary(
        &self,
        method: &str,
        msg: &[u8],
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Bytes, EtcdError> {
        let r = tokio::time::timeout(timeout, self.unary_inner(method, msg, token, timeout)).await;
        let r = r.unwrap_or_else(|_| Err(grpc_err(&self.endpoint, true, 0, "timed out".into())));
        if r.as_ref().is_err_and(|e| matches!(e, EtcdError::Status { status: 503, .. })) {
            // The connection may be what failed: the next call makes a new one.
            self.drop_conn().await;
        }
        r
    }

    async fn unary_inner(
        &self,
        method: &str,
        msg: &[u8],
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Bytes, EtcdError> {
        let ep = &self.endpoint;
        let h2e = |what: &str, e: h2::Error| grpc_err(ep, true, 0, format!("{what}: {e}"));
        let send = self.sender(timeout.min(Duration::from_millis(500))).await?;
        let mut send = send.ready().await.map_err(|e| h2e("connection", e))?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut req = http::Request::post(format!("{scheme}://{ep}{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(t) = token {
            req = req.header("token", t);
        }
        let req = req.body(()).map_err(|e| grpc_err(ep, false, 0, format!("request: {e}")))?;
        let (resp, mut body_tx) = send.send_request(req, false).map_err(|e| h2e("send", e))?;
        let mut framed = BytesMut::with_capacity(5 + msg.len());
        framed.put_u8(0);
        framed.put_u32(msg.len() as u32);
        framed.put_slice(msg);
        body_tx.send_data(framed.freeze(), true).map_err(|e| h2e("send", e))?;
        let resp = resp.await.map_err(|e| h2e("answer", e))?;
        // A trailers-only answer (an error) carries grpc-status in its headers.
        if let Some(e) = status_error(ep, resp.headers()) {
            return Err(e);
        }
        let mut body = resp.into_body();
        let mut buf = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| h2e("answer", e))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            buf.extend_from_slice(&chunk);
            if buf.len() > 4 << 20 {
                return Err(grpc_err(ep, false, 0, "answer over 4 MiB".into()));
            }
        }
        let trailers = body.trailers().await.map_err(|e| h2e("answer", e))?;
        if let Some(e) = trailers.as_ref().and_then(|t| status_error(ep, t)) {
            return Err(e);
        }
        if buf.len() < 5 || buf[0] != 0 {
            return Err(EtcdError::Malformed { endpoint: ep.clone(), what: "gRPC answer without a message" });
        }
        let n = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() != 5 + n {
            return Err(EtcdError::Malformed { endpoint: ep.clone(), what: "gRPC answer length" });
        }
        Ok(buf.freeze().slice(5..))
    }
}

/// The error a non-zero `grpc-status` stands for; UNAVAILABLE (14, no leader or
/// quorum), DEADLINE_EXCEEDED (4) and the like are worth another member.
fn status_error(endpoint: &str, h: &http::HeaderMap) -> Option<EtcdError> {
    let code: u32 = h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()?;
    if code == 0 {
        return None;
    }
    let message: String = h
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    let retriable = matches!(code, 1 | 4 | 8 | 10 | 13 | 14);
    Some(grpc_err(endpoint, retriable, code, format!("gRPC status {code}: {message}")))
}

/// grpc-message is percent-encoded.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn txn_request_bytes_are_what_protoc_would_write() {
        // Field by field: compare{target=CREATE, key="k", create_revision=0},
        // success{request_put{key="k", value="v", lease=7}}, failure{request_range{key="k"}}.
        let b = encode_txn(b"k", Target::Create, 0, b"v", 7);
        let want: &[u8] = &[
            0x0a, 0x07, 0x10, 0x01, 0x1a, 0x01, b'k', 0x28, 0x00, // compare
            0x12, 0x0a, 0x12, 0x08, 0x0a, 0x01, b'k', 0x12, 0x01, b'v', 0x18, 0x07, // success
            0x1a, 0x05, 0x0a, 0x03, 0x0a, 0x01, b'k', // failure
        ];
        assert_eq!(&b[..], want);
        let m = encode_txn(b"k", Target::Mod, 300, b"v", 0);
        assert_eq!(&m[..9], &[0x0a, 0x08, 0x10, 0x02, 0x1a, 0x01, b'k', 0x30, 0xac][..]);
    }

    #[test]
    fn txn_response_decodes_and_garbage_does_not() {
        // header{revision=42}, succeeded=false, responses[{response_range{kvs[{key="k",
        // mod_revision=5, value="v", lease=9}]}}]
        let kv: &[u8] = &[0x0a, 0x01, b'k', 0x18, 0x05, 0x2a, 0x01, b'v', 0x30, 0x09];
        let mut range = vec![0x12, kv.len() as u8];
        range.extend_from_slice(kv);
        let mut op = vec![0x0a, range.len() as u8];
        op.extend_from_slice(&range);
        let mut resp = vec![0x0a, 0x02, 0x18, 42, 0x10, 0x00, 0x1a, op.len() as u8];
        resp.extend_from_slice(&op);
        let (ok, rev, kv) = decode_txn(&resp).unwrap();
        assert!(!ok);
        assert_eq!(rev, 42);
        let kv = kv.unwrap();
        assert_eq!((kv.key.as_str(), &kv.value[..], kv.mod_revision, kv.lease), ("k", &b"v"[..], 5, 9));
        let (ok, rev, kv) = decode_txn(&[0x0a, 0x02, 0x18, 43, 0x10, 0x01]).unwrap();
        assert!(ok && rev == 43 && kv.is_none());
        assert!(decode_txn(&[0x0a, 0x09, 0x18]).is_none());
        assert!(decode_txn(&[0x0b]).is_none());
    }

    #[test]
    fn tls_setup_names_what_is_wrong_and_endpoints_become_server_names() {
        let e = tls_config(b"not a certificate", None).unwrap_err().to_string();
        assert!(e.contains("etcd CA file holds no certificate"), "{e}");
        let bad = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let e = tls_config(bad, None).unwrap_err().to_string();
        assert!(e.contains("etcd CA certificate"), "{e}");
        assert!(matches!(server_name("127.0.0.1:2379").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("[::1]:2379").unwrap(), ServerName::IpAddress(_)));
        assert_eq!(
            server_name("etcd-0.etcd.kbs.svc:2379").unwrap(),
            ServerName::try_from("etcd-0.etcd.kbs.svc").unwrap()
        );
        let e = server_name("bad host!:2379").unwrap_err().to_string();
        assert!(e.contains("\"bad host!:2379\" is not a TLS server name"), "{e}");
    }

    #[test]
    fn grpc_message_is_percent_decoded() {
        assert_eq!(
            percent_decode("etcdserver:%20requested%20lease%20not%20found"),
            "etcdserver: requested lease not found"
        );
        assert_eq!(percent_decode("100%"), "100%");
    }
}
