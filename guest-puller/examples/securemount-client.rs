//! A SecureMount client for the VM test (`ci/vm-securemount.sh`): calls a running
//! `cloak-cdh` the way kata-agent does (the same generated ttRPC service) and
//! prints one line: `ok`, or `error code=<ttRPC code> <message>` (exit status 1).
//!
//! ```text
//! securemount-client SOCKET VOLUME_TYPE MOUNT_POINT [--flag F]... [NAME=VALUE]...
//! securemount-client SOCKET --pull IMAGE BUNDLE_PATH      (ImagePullService.PullImage)
//! ```

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use guest_puller::cdh::pb::{api, api_ttrpc};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: securemount-client SOCKET VOLUME_TYPE MOUNT_POINT [--flag F]... [NAME=VALUE]...");
        return ExitCode::from(2);
    }
    if args[1] == "--pull" {
        return pull(&args);
    }
    let mut req = api::SecureMountRequest::new();
    req.volume_type = args[1].clone();
    req.mount_point = args[2].clone();
    let mut options = HashMap::new();
    let mut rest = args[3..].iter();
    while let Some(a) = rest.next() {
        if a == "--flag" {
            match rest.next() {
                Some(f) => req.flags.push(f.clone()),
                None => {
                    eprintln!("--flag needs a value");
                    return ExitCode::from(2);
                }
            }
        } else if let Some((k, v)) = a.split_once('=') {
            options.insert(k.to_string(), v.to_string());
        } else {
            eprintln!("{a:?}: expected NAME=VALUE");
            return ExitCode::from(2);
        }
    }
    req.options = options;
    let Some(result) = call(&args[0], move |client, ctx| async move {
        api_ttrpc::SecureMountServiceClient::new(client).secure_mount(ctx, &req).await
    }) else {
        return ExitCode::from(2);
    };
    report(result.map(|_| "ok".to_string()))
}

/// `--pull IMAGE BUNDLE_PATH`: prints `ok <manifest digest>`.
fn pull(args: &[String]) -> ExitCode {
    let (Some(image), Some(bundle)) = (args.get(2), args.get(3)) else {
        eprintln!("usage: securemount-client SOCKET --pull IMAGE BUNDLE_PATH");
        return ExitCode::from(2);
    };
    let mut req = api::ImagePullRequest::new();
    req.image_url = image.clone();
    req.bundle_path = bundle.clone();
    let Some(result) = call(&args[0], move |client, ctx| async move {
        api_ttrpc::ImagePullServiceClient::new(client).pull_image(ctx, &req).await
    }) else {
        return ExitCode::from(2);
    };
    report(result.map(|r| format!("ok {}", r.manifest_digest)))
}

fn socket_addr(s: &str) -> String {
    if s.starts_with("unix://") {
        s.to_string()
    } else {
        format!("unix://{s}")
    }
}

/// Connects to the daemon at `socket` and makes one call with a 10-minute deadline
/// (a format under emulation with cryptsetup's default PBKDF, argon2id benchmarked,
/// takes tens of seconds). `None` when no runtime could be built (said on stderr).
fn call<T, Fut>(
    socket: &str,
    call: impl FnOnce(ttrpc::r#async::Client, ttrpc::context::Context) -> Fut,
) -> Option<Result<T, String>>
where
    Fut: std::future::Future<Output = Result<T, ttrpc::Error>>,
{
    let socket = socket_addr(socket);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return None;
        }
    };
    Some(rt.block_on(async move {
        let client = ttrpc::r#async::Client::connect(&socket)
            .await
            .map_err(|e| format!("code=TRANSPORT connecting to {socket}: {e}"))?;
        let ctx = ttrpc::context::with_timeout(Duration::from_secs(600).as_nanos() as i64);
        call(client, ctx).await.map_err(status_text)
    }))
}

fn status_text(e: ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => format!("code={:?} {}", s.code(), s.message()),
        other => format!("code=TRANSPORT {other}"),
    }
}

/// One line: what succeeded, or `error code=… message` (exit status 1).
fn report(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("error {e}");
            ExitCode::from(1)
        }
    }
}
