//! Says hello to the `{name}` path parameter, and echoes who called and how
//! (for gatehouse's end-to-end test). Handles API Gateway payload formats
//! 1.0 and 2.0 alike.

use lambda_http::{Body, Error, Request, RequestExt, Response, run, service_fn};

async fn hello(req: Request) -> Result<Response<Body>, Error> {
    let params = req.path_parameters();
    let who = params.first("name").unwrap_or("world");
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    Ok(Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .header("x-seen-request-id", request_id)
        .body(format!("hello, {who}").into())?)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    run(service_fn(hello)).await
}
