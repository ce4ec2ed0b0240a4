//! `lambda-floor`: the least a `lambda_http` function can do, built with the release profile beside
//! the functions so that `make bench` reports their cold start as ratios to it.

use lambda_http::{Body, Error, Request, Response, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    run(service_fn(|_request: Request| async {
        Ok::<_, Error>(Response::new(Body::from(r#"{"hello":"world"}"#)))
    }))
    .await
}
