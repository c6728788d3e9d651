// graphql-ws (protocol graphql-transport-ws) over the ws package, against tether's
// ws(s)://HOST/graphql; queries and mutations as plain fetch POSTs to TETHER_URL.
// Auth: the same header object as over HTTP, as connectionParams
// ({"x-api-key": key} or {"Authorization": jwt}).
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';
import { run, diag, trackSockets, authHeaders, SUBSCRIPTION, HISTORY, mutationText } from '../lib/common.mjs';

async function post(env, query, variables) {
  const res = await fetch(env.url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json', ...authHeaders(env.auth) },
    body: JSON.stringify({ query, variables }),
  });
  const text = await res.text();
  let body;
  try { body = JSON.parse(text); } catch { body = undefined; }
  if (!res.ok) throw Object.assign(new Error(`HTTP ${res.status}`), { statusCode: res.status, body, bodyText: body ? undefined : text });
  if (body?.errors?.length) throw Object.assign(new Error('GraphQL errors'), { errors: body.errors });
  return body.data;
}

run(async (env) => {
  const wsUrl = process.env.TETHER_WS_URL || env.url.replace(/^http/, 'ws');
  // graphql-transport-ws has no per-subscription acknowledgement. To say {"ready": true} only once
  // the server has read our `subscribe`, send our own `ping` right after it on the same socket and
  // wait for the `pong` (the protocol lets the client ping at any time; servers must pong).
  let onReady = () => {};
  let probeSent = false;
  const client = createClient({
    url: wsUrl,
    webSocketImpl: trackSockets(WebSocket),
    connectionParams: authHeaders(env.auth),
    lazy: true,
    retryAttempts: 0,
    on: {
      connected: (socket) => {
        diag('graphql-ws connected');
        setTimeout(() => {
          if (socket.readyState !== WebSocket.OPEN) return;
          probeSent = true;
          socket.send(JSON.stringify({ type: 'ping', payload: { tether: 'ready-probe' } }));
          setTimeout(() => { diag('no pong within 2 s; reporting ready anyway'); onReady(); }, 2000).unref();
        }, 0);
      },
      // (servers need not echo the ping's payload, so any pong after the probe counts)
      pong: (received) => { if (received && probeSent) onReady(); },
      closed: (ev) => diag('graphql-ws closed', ev?.code, ev?.reason),
      error: (e) => diag('graphql-ws error', e?.message ?? e),
    },
  });
  return {
    async mutate(name, inputType, input) {
      return (await post(env, mutationText(name, inputType), { input }))[name];
    },
    async history(traceId) {
      return (await post(env, HISTORY, { t: traceId })).traceEvents;
    },
    subscribe(traceId, handlers) {
      let readyOnce = false;
      onReady = () => { if (!readyOnce) { readyOnce = true; handlers.onReady(); } };
      return client.subscribe({ query: SUBSCRIPTION, variables: { t: traceId } }, {
        next(r) {
          if (r?.errors?.length) return handlers.onError(r);
          if (r?.data?.onTraceEvent) handlers.onEvent(r.data.onTraceEvent);
          else diag('unexpected result:', JSON.stringify(r));
        },
        error: handlers.onError,
        complete() { diag('subscription completed by the server'); },
      });
    },
    async close() { await client.dispose(); },
  };
});
