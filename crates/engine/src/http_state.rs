//! The store data of one HTTP request's instance: WASI and `wasi:http`
//! contexts, the request's memory limiter, what else its component is given
//! (`host`: nothing for a plain `wasi:http` component, Spin's interfaces for
//! a Spin component), and the hooks that decide which outgoing requests it
//! may make ([`Outgoing`]).
use std::future::Future;
use std::sync::Arc;

use hyper::{Request, Response, Uri};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use crate::limits::GuestLimiter;

/// Store data of one request's instance.
pub(crate) struct HttpState<T = ()> {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    /// This request's memory limit; counts into the container's figure.
    pub(crate) limiter: GuestLimiter,
    hooks: OutgoingHooks,
    /// The request's state of the host interfaces beyond WASI and `wasi:http`.
    pub(crate) host: T,
}

impl<T> HttpState<T> {
    /// The store data of one request: its WASI context, its limiter, which
    /// outgoing requests it may make, and its `host` state.
    pub(crate) fn new(
        wasi: WasiCtx,
        limiter: GuestLimiter,
        outgoing: Outgoing,
        host: T,
    ) -> HttpState<T> {
        HttpState {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limiter,
            hooks: OutgoingHooks { outgoing },
            host,
        }
    }
}

impl<T: Send> WasiView for HttpState<T> {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl<T: Send> WasiHttpView for HttpState<T> {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Which outgoing HTTP requests (`wasi:http/outgoing-handler`) a component
/// may make; the others fail with the error code `HTTP-request-denied`.
#[derive(Clone)]
pub(crate) enum Outgoing {
    /// Every one (`WASISHIM_HTTP_OUTGOING=on`, the default).
    All,
    /// None (`WASISHIM_HTTP_OUTGOING=off`).
    Refused {
        /// Why, for the log: the setting that refuses them.
        why: &'static str,
    },
    /// Those to the URLs the filter allows (a Spin component's
    /// `allowed_outbound_hosts`).
    Filtered(Arc<dyn OutgoingFilter>),
}

/// Decides which URLs a component may send requests to.
pub(crate) trait OutgoingFilter: Send + Sync {
    /// Whether a request to `uri` (absolute: scheme, authority, path) may go.
    fn allows(&self, uri: &Uri) -> bool;
    /// What is allowed, for the log line of a refused request.
    fn describe(&self) -> String;
}

/// The `wasi:http` hooks of a request's instance: wasmtime's own sending,
/// behind the [`Outgoing`] policy.
struct OutgoingHooks {
    outgoing: Outgoing,
}

type SendResult = wasmtime_wasi_http::Result<(
    Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for OutgoingHooks {
    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let refused = match &self.outgoing {
            Outgoing::All => None,
            Outgoing::Refused { why } => Some(why.to_string()),
            Outgoing::Filtered(filter) if filter.allows(request.uri()) => None,
            Outgoing::Filtered(filter) => Some(format!("allowed: {}", filter.describe())),
        };
        match refused {
            None => wasmtime_wasi_http::default_hooks().send_request(request, options, fut),
            Some(why) => {
                log::info!(
                    "refused the guest's outgoing HTTP request to {} ({why})",
                    request.uri()
                );
                Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
            }
        }
    }
}
