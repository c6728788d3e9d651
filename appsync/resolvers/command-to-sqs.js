// Resolver for every command mutation (createOrder, cancelOrder, shipOrder): APPSYNC_JS on an
// HTTP data source whose endpoint is https://sqs.<region>.amazonaws.com, signed with SigV4 for
// the service `sqs` by the data source's role (which needs sqs:SendMessage on the queue).
//
// It hands the client a trace ID at once and sends tether's foreign-producer message:
//   {"traceId": "<uuid>", "command": "<mutation field>", "input": {...}, "owner": "<principal>"}
// `tether worker` (TETHER_QUEUE=sqs) receives it, checks it like a mutation, stores the command
// with its ACCEPTED event and runs it; an invalid one becomes a dead letter, visible on the
// trace. Environment variables of the GraphQL API: COMMAND_QUEUE_URL (the queue's URL) and
// COMMAND_QUEUE_PATH (its path, `/<account>/<queue name>`).
//
// idempotencyKey is not honoured here: AppSync keeps no state between calls. Clients that retry
// should use tether's own API, or the producer must deduplicate before this resolver.
import { util } from '@aws-appsync/utils';

/** The principal that owns the trace, named as tether names JWT subjects. */
function owner(identity) {
  if (!identity || !identity.sub) return undefined;
  const cognito = (identity.issuer || '').includes('cognito-idp.');
  return `${cognito ? 'cognito' : 'oidc'}:${identity.sub}`;
}

export function request(ctx) {
  const traceId = util.autoId();
  ctx.stash.traceId = traceId;
  const message = { traceId, command: ctx.info.fieldName, input: ctx.args.input };
  const principal = owner(ctx.identity);
  if (principal) message.owner = principal;
  return {
    method: 'POST',
    resourcePath: ctx.env.COMMAND_QUEUE_PATH,
    params: {
      headers: {
        'content-type': 'application/x-amz-json-1.0',
        'x-amz-target': 'AmazonSQS.SendMessage',
      },
      body: JSON.stringify({
        QueueUrl: ctx.env.COMMAND_QUEUE_URL,
        MessageBody: JSON.stringify(message),
      }),
    },
  };
}

export function response(ctx) {
  if (ctx.error) util.error(ctx.error.message, ctx.error.type);
  if (ctx.result.statusCode !== 200) util.error(ctx.result.body, 'SqsError');
  return { traceId: ctx.stash.traceId, status: 'ACCEPTED', acceptedAt: util.time.nowISO8601() };
}
