// aws-appsync-subscription-link 3.1.x (header-<base64url> subprotocol auth) + aws-appsync-auth-link 3
// on Apollo Client 3, wired the way the AWS README shows:
//   ApolloLink.from([createAuthLink(cfg), createSubscriptionHandshakeLink(cfg, httpLink)])
// Queries and mutations go over HTTP (HttpLink + auth link), the subscription over
// <TETHER_URL>/realtime (ws:// for http://, wss:// for https://).
import { createRequire } from 'node:module';
import WebSocket from 'ws';
import { run, diag, trackSockets, SUBSCRIPTION, HISTORY, mutationText } from '../lib/common.mjs';

// The link opens `new WebSocket(url, protocols)` on the global; Node 20 has none without a flag.
globalThis.WebSocket = trackSockets(WebSocket);

// The link packages are CommonJS and require('@apollo/client/core'): use the same (CJS) instance.
const require = createRequire(import.meta.url);
const { ApolloClient, InMemoryCache, HttpLink, ApolloLink, gql } = require('@apollo/client/core');
const { createAuthLink, AUTH_TYPE } = require('aws-appsync-auth-link');
const { createSubscriptionHandshakeLink, CONTROL_EVENTS_KEY } = require('aws-appsync-subscription-link');

function linkAuth(auth) {
  if (auth.type === 'API_KEY') return { type: AUTH_TYPE.API_KEY, apiKey: auth.apiKey };
  if (auth.type === 'OPENID_CONNECT') return { type: AUTH_TYPE.OPENID_CONNECT, jwtToken: auth.jwt };
  return { type: AUTH_TYPE.AWS_LAMBDA, token: auth.token };
}

run(async (env) => {
  const cfg = { url: env.url, region: env.region, auth: linkAuth(env.auth) };
  const httpLink = new HttpLink({ uri: env.url });
  const client = new ApolloClient({
    link: ApolloLink.from([createAuthLink(cfg), createSubscriptionHandshakeLink(cfg, httpLink)]),
    cache: new InMemoryCache(),
    defaultOptions: {
      query: { fetchPolicy: 'no-cache', errorPolicy: 'none' },
      mutate: { fetchPolicy: 'no-cache', errorPolicy: 'none' },
    },
  });
  return {
    async mutate(name, inputType, input) {
      const r = await client.mutate({ mutation: gql(mutationText(name, inputType)), variables: { input } });
      return r.data[name];
    },
    async history(traceId) {
      const r = await client.query({ query: gql(HISTORY), variables: { t: traceId } });
      return r.data.traceEvents;
    },
    subscribe(traceId, { onReady, onEvent, onError }) {
      const sub = client.subscribe({
        query: gql(SUBSCRIPTION),
        variables: { t: traceId },
        fetchPolicy: 'no-cache',
        // ask the link for its control messages: start_ack arrives as
        // {extensions: {controlMsgType: 'CONNECTED'}}
        context: { controlMessages: { [CONTROL_EVENTS_KEY]: true } },
      }).subscribe({
        next(r) {
          if (r?.extensions?.controlMsgType) {
            diag('control message:', r.extensions.controlMsgType);
            if (r.extensions.controlMsgType === 'CONNECTED') onReady();
            return;
          }
          if (r?.errors?.length) return onError(r);
          if (r?.data?.onTraceEvent) onEvent(r.data.onTraceEvent);
          else diag('unexpected result:', JSON.stringify(r));
        },
        error: onError,
        complete() { diag('subscription completed by the link'); },
      });
      return () => sub.unsubscribe();
    },
    close() { client.stop(); },
  };
});
