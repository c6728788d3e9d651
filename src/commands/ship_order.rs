use async_trait::async_trait;
use serde_json::{Value, json};

use super::required_str;
use crate::domain::{CommandError, ValidationError, now_millis};
use crate::ports::{CommandContext, Invokable, SqlArg};

/// `shipOrder`: marks a created order as shipped (after which it cannot be cancelled).
pub struct ShipOrder;

#[async_trait]
impl Invokable for ShipOrder {
    fn command_type(&self) -> &'static str {
        "shipOrder"
    }

    fn validate(&self, input: &Value) -> Result<(), ValidationError> {
        required_str(input, "orderId", 128)?;
        Ok(())
    }

    async fn invoke(&self, ctx: &mut CommandContext<'_>) -> Result<Value, CommandError> {
        let order_id = required_str(ctx.input, "orderId", 128)
            .map_err(|e| CommandError::Malformed(e.message))?
            .to_owned();
        let changed = ctx
            .tx
            .execute(
                "UPDATE orders SET status = 'SHIPPED', updated_at = $1 WHERE order_id = $2 AND status = 'CREATED'",
                &[SqlArg::Int(now_millis()), SqlArg::from(order_id.as_str())],
            )
            .await
            .map_err(|e| super::db_error("shipping the order", e))?;
        if changed == 0 {
            return Err(CommandError::business(
                "ORDER_NOT_SHIPPABLE",
                format!("order {order_id} does not exist or is not in CREATED state"),
            ));
        }
        ctx.emit("OrderShipped", json!({"orderId": order_id}));
        Ok(json!({"orderId": order_id, "status": "SHIPPED"}))
    }
}
