use async_trait::async_trait;
use serde_json::{Value, json};

use super::required_str;
use crate::domain::{CommandError, ValidationError, now_millis};
use crate::ports::{CommandContext, Invokable, SqlArg};

/// `cancelOrder`: cancels an order that exists and has not shipped. Anything else is a
/// business error: `ERROR` at once, no retry.
pub struct CancelOrder;

#[async_trait]
impl Invokable for CancelOrder {
    fn command_type(&self) -> &'static str {
        "cancelOrder"
    }

    fn validate(&self, input: &Value) -> Result<(), ValidationError> {
        required_str(input, "orderId", 128)?;
        Ok(())
    }

    async fn invoke(&self, ctx: &mut CommandContext<'_>) -> Result<Value, CommandError> {
        let order_id = required_str(ctx.input, "orderId", 128)
            .map_err(|e| CommandError::Malformed(e.message))?
            .to_owned();
        let row = ctx
            .tx
            .fetch_optional(
                "SELECT status FROM orders WHERE order_id = $1",
                &[SqlArg::from(order_id.as_str())],
            )
            .await
            .map_err(|e| super::db_error("reading the order", e))?;
        let status = match row.as_ref().and_then(|r| r.first()).and_then(Value::as_str) {
            None => {
                return Err(CommandError::business(
                    "ORDER_NOT_FOUND",
                    format!("order {order_id} does not exist"),
                ));
            }
            Some(status) => status.to_owned(),
        };
        match status.as_str() {
            "SHIPPED" => {
                return Err(CommandError::business(
                    "ORDER_ALREADY_SHIPPED",
                    format!("order {order_id} has shipped"),
                ));
            }
            "CANCELLED" => {
                return Err(CommandError::business(
                    "ORDER_ALREADY_CANCELLED",
                    format!("order {order_id} is already cancelled"),
                ));
            }
            _ => {}
        }
        ctx.tx
            .execute(
                "UPDATE orders SET status = 'CANCELLED', updated_at = $1 WHERE order_id = $2",
                &[SqlArg::Int(now_millis()), SqlArg::from(order_id.as_str())],
            )
            .await
            .map_err(|e| super::db_error("cancelling the order", e))?;
        let reason = ctx.input.get("reason").cloned().unwrap_or(Value::Null);
        ctx.emit(
            "OrderCancelled",
            json!({"orderId": order_id, "reason": reason}),
        );
        Ok(json!({"orderId": order_id, "status": "CANCELLED"}))
    }
}
