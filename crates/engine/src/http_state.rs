//! The store data of one HTTP request's instance: WASI and `wasi:http`
//! contexts, the request's memory limiter, and the hooks that refuse
//! outgoing requests when `WASISHIM_HTTP_OUTGOING=off`.
use std::future::Future;

use hyper::{Request, Response};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use crate::http_settings::HTTP_OUTGOING_ENV;
use crate::limits::GuestLimiter;

/// Store data of one request's instance.
pub(crate) struct HttpState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    /// This request's memory limit; counts into the container's figure.
    pub(crate) limiter: GuestLimiter,
    outgoing: bool,
    deny: DenyOutgoing,
}

impl HttpState {
    /// The store data of one request: its WASI context, its limiter, and
    /// whether it may make outgoing requests (`WASISHIM_HTTP_OUTGOING`).
    pub(crate) fn new(wasi: WasiCtx, limiter: GuestLimiter, outgoing: bool) -> HttpState {
        HttpState {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limiter,
            outgoing,
            deny: DenyOutgoing,
        }
    }
}

impl WasiView for HttpState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HttpState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        let hooks: &mut dyn WasiHttpHooks = if self.outgoing {
            wasmtime_wasi_http::default_hooks()
        } else {
            &mut self.deny
        };
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks,
        }
    }
}

/// Hooks that refuse every outgoing request (`WASISHIM_HTTP_OUTGOING=off`).
struct DenyOutgoing;

type SendResult = wasmtime_wasi_http::Result<(
    Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for DenyOutgoing {
    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        log::info!(
            "refused the guest's outgoing HTTP request to {} ({HTTP_OUTGOING_ENV}=off)",
            request.uri()
        );
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}
