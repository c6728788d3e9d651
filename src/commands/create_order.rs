use async_trait::async_trait;
use serde_json::{Value, json};

use super::required_str;
use crate::domain::{CommandError, ValidationError, now_millis};
use crate::ports::{CommandContext, Invokable, SqlArg};

const MAX_ITEMS: usize = 100;
const MAX_QUANTITY: i64 = 10_000;

/// `createOrder`: writes an order and announces `OrderCreated`.
pub struct CreateOrder;

struct Line {
    sku: String,
    quantity: i64,
    unit_price_cents: i64,
}

fn lines(input: &Value) -> Result<Vec<Line>, ValidationError> {
    let items = input
        .get("items")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if items.is_empty() {
        return Err(ValidationError::field(
            "input.items",
            "an order needs at least one item",
        ));
    }
    if items.len() > MAX_ITEMS {
        return Err(ValidationError::field(
            "input.items",
            format!("an order has at most {MAX_ITEMS} items"),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let sku = required_str(item, "sku", 64).map_err(|_| {
                ValidationError::field(format!("input.items[{i}].sku"), "sku must not be blank")
            })?;
            let quantity = item.get("quantity").and_then(Value::as_i64).unwrap_or(0);
            if !(1..=MAX_QUANTITY).contains(&quantity) {
                return Err(ValidationError::field(
                    format!("input.items[{i}].quantity"),
                    format!("quantity must be between 1 and {MAX_QUANTITY}"),
                ));
            }
            let unit_price_cents = item
                .get("unitPriceCents")
                .and_then(Value::as_i64)
                .unwrap_or(-1);
            if unit_price_cents < 0 {
                return Err(ValidationError::field(
                    format!("input.items[{i}].unitPriceCents"),
                    "unitPriceCents must not be negative",
                ));
            }
            Ok(Line {
                sku: sku.to_owned(),
                quantity,
                unit_price_cents,
            })
        })
        .collect()
}

#[async_trait]
impl Invokable for CreateOrder {
    fn command_type(&self) -> &'static str {
        "createOrder"
    }

    fn validate(&self, input: &Value) -> Result<(), ValidationError> {
        required_str(input, "customerId", 128)?;
        lines(input)?;
        Ok(())
    }

    async fn invoke(&self, ctx: &mut CommandContext<'_>) -> Result<Value, CommandError> {
        let customer_id = required_str(ctx.input, "customerId", 128)
            .map_err(|e| CommandError::Malformed(e.message))?
            .to_owned();
        let lines = lines(ctx.input).map_err(|e| CommandError::Malformed(e.message))?;
        let total_cents: i64 = lines.iter().map(|l| l.quantity * l.unit_price_cents).sum();
        let items: Vec<Value> = lines
            .iter()
            .map(|l| json!({"sku": l.sku, "quantity": l.quantity, "unitPriceCents": l.unit_price_cents}))
            .collect();
        let order_id = format!("ord_{}", uuid::Uuid::now_v7().simple());
        let now = now_millis();
        ctx.tx
            .insert(
                "orders",
                &[
                    "order_id",
                    "trace_id",
                    "customer_id",
                    "items",
                    "total_cents",
                    "status",
                    "created_at",
                    "updated_at",
                ],
                vec![
                    SqlArg::from(order_id.as_str()),
                    SqlArg::from(ctx.trace_id.to_string()),
                    SqlArg::from(customer_id.as_str()),
                    SqlArg::from(Value::from(items.clone()).to_string()),
                    SqlArg::Int(total_cents),
                    SqlArg::from("CREATED"),
                    SqlArg::Int(now),
                    SqlArg::Int(now),
                ],
            )
            .await
            .map_err(|e| super::db_error("writing the order", e))?;
        ctx.emit(
            "OrderCreated",
            json!({"orderId": order_id, "customerId": customer_id, "totalCents": total_cents, "items": items}),
        );
        Ok(json!({"orderId": order_id, "totalCents": total_cents}))
    }
}
