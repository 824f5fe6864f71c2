//! Step 11 for Lambda functions: the request as an event, the function's
//! answer as the response.

use http::{Method, Response, Version};

use crate::body::{empty, full};
use crate::error::GatewayError;

use super::*;

/// Step 11 for a Lambda function: the request (read whole at step 9) as an
/// API Gateway event, one invocation (retried only while the function has
/// not run), and its answer mapped back to HTTP.
pub(super) async fn invoke<B>(
    parts: http::request::Parts,
    body: ReadBody<B>,
    ctx: &mut RequestCtx,
    invoke: &crate::route::Invoke,
    sent: Sent<'_>,
) -> Result<Answer, GatewayError> {
    use crate::proxy::lambda::{self, LambdaError};
    let function = &invoke.function;
    ctx.record.target = Some(function.label().to_owned());
    let ReadBody::Whole(bytes) = body else {
        return Err(GatewayError::Internal("a function's body is read whole"));
    };
    let Sent {
        path,
        span,
        host,
        params,
    } = sent;
    let version = parts.version;
    let event = lambda::event(&lambda::EventInput {
        format: function.format,
        method: &parts.method,
        path: &path,
        query: parts.uri.query(),
        headers: &parts.headers,
        resource: &invoke.resource,
        params,
        tail_param: crate::route::TAIL,
        principal: ctx.principal.as_ref(),
        request_id: &ctx.record.request_id,
        source_ip: ctx.record.client,
        host: host.authority.as_deref(),
        protocol: match version {
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        body: &bytes,
        now: std::time::SystemTime::now(),
    });
    let payload = serde_json::to_vec(&event)
        .map_err(|_| GatewayError::Internal("cannot encode the Lambda event"))?;
    if payload.len() as u64 > lambda::PAYLOAD_LIMIT {
        return Err(GatewayError::PayloadTooLarge {
            limit: lambda::PAYLOAD_LIMIT,
        });
    }
    let started = tokio::time::Instant::now();
    let span_started = ctx.clock();
    let deadline = started + function.request_timeout;
    let invoked = tokio::time::timeout_at(deadline, function.invoke(payload.into())).await;
    ctx.record
        .meters
        .upstream_took(started.elapsed().as_secs_f64());
    // The function's answer, parsed once: the span records its status.
    let parsed = match &invoked {
        Ok(Ok(i)) if i.function_error.is_none() => {
            Some(lambda::answer(function.format, &i.payload))
        }
        _ => None,
    };
    record_upstream_span(
        ctx,
        span,
        span_started,
        function.label(),
        &function.name,
        match (&invoked, &parsed) {
            (_, Some(Ok(a))) => Ok((a.status.as_u16(), 1)),
            (_, Some(Err(_))) => Err("malformed answer".to_owned()),
            (Ok(Ok(_)), None) => Err("function error".to_owned()),
            (Ok(Err(e)), None) => Err(e.to_string()),
            (Err(_), None) => Err("timed out".to_owned()),
        },
    );
    let invoked = invoked.map_err(|_| GatewayError::UpstreamTimeout)?;
    if let Err(LambdaError::Throttled { retry_after_secs }) = &invoked {
        tracing::warn!(request_id = %ctx.record.request_id, upstream = %function.name, retry_after_secs, "Lambda throttled the function");
    }
    let invoked = invoked?;
    let request_id = invoked.request_id;
    if let Some(kind) = invoked.function_error {
        return Err(LambdaError::Function { kind, request_id }.into());
    }
    let answer = parsed
        .unwrap_or_else(|| lambda::answer(function.format, &invoked.payload))
        .map_err(|why| LambdaError::Malformed {
            why,
            request_id: request_id.clone(),
        })?;
    tracing::debug!(request_id = %ctx.record.request_id, lambda_request_id = request_id.as_deref().unwrap_or("-"), "function answered");
    let body = if parts.method == Method::HEAD {
        empty()
    } else {
        full(answer.body)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = answer.status;
    *resp.headers_mut() = answer.headers;
    Ok(Answer {
        response: resp,
        deadline: None,
        source: Source::Upstream,
    })
}
