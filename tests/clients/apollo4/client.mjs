// aws-appsync-subscription-link 4.x + aws-appsync-auth-link 4
// on Apollo Client 4 (rxjs 7), wired the way the AWS README shows:
//   ApolloLink.from([createAuthLink(cfg), createSubscriptionHandshakeLink(cfg, httpLink)])
// Queries and mutations go over HTTP (HttpLink + auth link), the subscription over
// <TETHER_URL>/realtime (ws:// for http://, wss:// for https://).
import WebSocket from 'ws';
import { run, diag, trackSockets, SUBSCRIPTION, HISTORY, mutationText } from '../lib/common.mjs';

// The link opens `new WebSocket(url, protocols)` on the global; Node 20 has none without a flag.
globalThis.WebSocket = trackSockets(WebSocket);

// All ESM here (the 4.x links ship index.mjs importing '@apollo/client/core').
import { ApolloClient, InMemoryCache, HttpLink, ApolloLink, gql } from '@apollo/client/core';
import { createAuthLink, AUTH_TYPE } from 'aws-appsync-auth-link';
import { createSubscriptionHandshakeLink, CONTROL_EVENTS_KEY } from 'aws-appsync-subscription-link';
import { tap } from 'rxjs';

function linkAuth(auth) {
  if (auth.type === 'API_KEY') return { type: AUTH_TYPE.API_KEY, apiKey: auth.apiKey };
  if (auth.type === 'OPENID_CONNECT') return { type: AUTH_TYPE.OPENID_CONNECT, jwtToken: auth.jwt };
  return { type: AUTH_TYPE.AWS_LAMBDA, token: auth.token };
}

run(async (env) => {
  const cfg = { url: env.url, region: env.region, auth: linkAuth(env.auth) };
  const httpLink = new HttpLink({ uri: env.url });
  // ApolloClient 4 drops link results that carry neither data nor error, so the link's start_ack
  // control message ({extensions: {controlMsgType: 'CONNECTED'}}) never reaches client.subscribe()'s
  // observer. Watch for it between the client and the links instead.
  let onControl = () => {};
  const controlTap = new ApolloLink((operation, forward) => forward(operation).pipe(tap((r) => {
    if (r?.extensions?.controlMsgType) onControl(r.extensions.controlMsgType);
  })));
  const client = new ApolloClient({
    link: ApolloLink.from([controlTap, createAuthLink(cfg), createSubscriptionHandshakeLink(cfg, httpLink)]),
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
      onControl = (type) => {
        diag('control message:', type);
        if (type === 'CONNECTED') onReady();
      };
      const sub = client.subscribe({
        query: gql(SUBSCRIPTION),
        variables: { t: traceId },
        fetchPolicy: 'no-cache',
        // ask the link for its control messages: start_ack arrives as
        // {extensions: {controlMsgType: 'CONNECTED'}}
        context: { controlMessages: { [CONTROL_EVENTS_KEY]: true } },
      }).subscribe({
        next(r) {
          // ApolloClient 4 reports subscription errors as a result with `error`, not via error()
          if (r?.error) return onError(r.error);
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
