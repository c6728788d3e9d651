// Amplify JS v6 (aws-amplify): Amplify.configure + generateClient() from 'aws-amplify/api'.
// Queries and mutations: client.graphql over HTTP. Subscriptions: Amplify's AppSync realtime
// provider, which ALWAYS dials wss://<host><path>/realtime (even for an http:// endpoint), so
// TETHER_URL must be https:// here; a self-signed certificate is accepted unless
// TETHER_TLS_VERIFY=1 (see lib/common.mjs allowSelfSigned).
//
// Auth:  API_KEY        -> defaultAuthMode 'apiKey'  (X-Api-Key / "x-api-key" in the header object)
//        OPENID_CONNECT -> defaultAuthMode 'oidc' with a custom token provider returning the JWT
//                          as the access token (sent raw in Authorization, no "Bearer")
//        AWS_LAMBDA     -> authMode 'lambda' with authToken (sent raw in Authorization)
import WebSocket from 'ws';
import { Amplify } from 'aws-amplify';
import { generateClient, CONNECTION_STATE_CHANGE } from 'aws-amplify/api';
import { Hub } from 'aws-amplify/utils';
import { run, diag, trackSockets, SUBSCRIPTION, HISTORY, mutationText } from '../lib/common.mjs';

// The realtime provider opens `new WebSocket(url, protocols)` on the global; Node 20 has none.
globalThis.WebSocket = trackSockets(WebSocket);

function decodeJwtPayload(jwt) {
  try {
    return JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString('utf8'));
  } catch {
    return {};
  }
}

// Amplify reports GraphQL failures by rejecting with the whole result ({data, errors}).
function unwrap(r, field) {
  if (r?.errors?.length) throw r;
  return r.data[field];
}

run(async (env) => {
  const graphqlConfig = { endpoint: env.url, region: env.region };
  let libraryOptions;
  let clientParams = {};
  if (env.auth.type === 'API_KEY') {
    Object.assign(graphqlConfig, { defaultAuthMode: 'apiKey', apiKey: env.auth.apiKey });
  } else if (env.auth.type === 'OPENID_CONNECT') {
    graphqlConfig.defaultAuthMode = 'oidc';
    const accessToken = { toString: () => env.auth.jwt, payload: decodeJwtPayload(env.auth.jwt) };
    libraryOptions = { Auth: { tokenProvider: { getTokens: async () => ({ accessToken }) } } };
  } else {
    graphqlConfig.defaultAuthMode = 'lambda';
    clientParams = { authMode: 'lambda', authToken: env.auth.token };
  }
  Amplify.configure({ API: { GraphQL: graphqlConfig } }, libraryOptions);
  const client = generateClient(clientParams);

  let onAck = () => {};
  const stopHub = Hub.listen('api', ({ payload }) => {
    if (payload.event === CONNECTION_STATE_CHANGE) diag('amplify connection state:', payload.data.connectionState);
    // dispatched by the realtime provider when start_ack arrives for a subscription
    else if (payload.event === 'Subscription ack') onAck();
    else diag('amplify api event:', payload.event, payload.message ?? '');
  });

  return {
    async mutate(name, inputType, input) {
      return unwrap(await client.graphql({ query: mutationText(name, inputType), variables: { input } }), name);
    },
    async history(traceId) {
      return unwrap(await client.graphql({ query: HISTORY, variables: { t: traceId } }), 'traceEvents');
    },
    subscribe(traceId, { onReady, onEvent, onError }) {
      let readyOnce = false;
      onAck = () => { if (!readyOnce) { readyOnce = true; onReady(); } };
      const sub = client.graphql({ query: SUBSCRIPTION, variables: { t: traceId } }).subscribe({
        next(r) {
          if (r?.errors?.length) return onError(r);
          if (r?.data?.onTraceEvent) onEvent(r.data.onTraceEvent);
          else diag('unexpected result:', JSON.stringify(r));
        },
        error: onError,
        complete() { diag('subscription completed'); },
      });
      return () => sub.unsubscribe();
    },
    close() { stopHub(); },
  };
});
