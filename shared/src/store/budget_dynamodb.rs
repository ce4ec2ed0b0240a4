//! Rate budgets in DynamoDB: one item per CRM account in the sync-records table
//! (`pk = budget#<account>`), one number attribute per lane (`generalFullAtUs`, `searchFullAtUs`).
//!
//! A take is one conditional `UpdateItem` with no read before it. While a lane's bucket is not
//! full its full-at lies in the future and the take adds to it atomically
//! (`SET a = a + :cost` if `a > :now AND a <= :ceiling - :cost`), so any number of concurrent
//! takers each succeed or are refused in one write. A full (idle) bucket's full-at lies in the
//! past, where the new value is `now + cost` instead (`SET a = :start` if `a <= :now`). The
//! caller's last sight of the lane picks the form; when it guessed wrong, the refusal carries
//! the item (`ReturnValuesOnConditionCheckFailure`), and the second write uses the right form.
//! Of 50 callers arriving at an idle bucket at once, one sets it and 49 add to it: at most two
//! writes each, and no retry storm.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};

use super::aws::LazyClient;
use super::budget::{BudgetStore, LaneTake, Taken, apply, budget_key, refused};
use crate::budget::spec::Lane;
use crate::error::{Error, Result};

/// Writes a take may need when other callers keep changing the item between them.
const MAX_WRITES: usize = 6;
/// Budget items outlive their last use by this much (the table's TTL removes them).
const KEEP_SECONDS: i64 = 2 * 24 * 3600;

pub struct DynamoDbBudgetStore {
    client: Arc<LazyClient<aws_sdk_dynamodb::Client>>,
    table: String,
}

impl DynamoDbBudgetStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        DynamoDbBudgetStore {
            client: Arc::new(LazyClient::ready(client, aws_sdk_dynamodb::Client::new)),
            table: table.into(),
        }
    }

    pub(crate) fn shared(
        client: Arc<LazyClient<aws_sdk_dynamodb::Client>>,
        table: impl Into<String>,
    ) -> Self {
        DynamoDbBudgetStore {
            client,
            table: table.into(),
        }
    }
}

fn attribute(lane: Lane) -> &'static str {
    match lane {
        Lane::General => "generalFullAtUs",
        Lane::Search => "searchFullAtUs",
    }
}

fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn read(item: Option<&HashMap<String, AttributeValue>>, lane: Lane) -> Option<i64> {
    item?.get(attribute(lane))?.as_n().ok()?.parse().ok()
}

fn store_error(e: impl std::error::Error + 'static) -> Error {
    Error::Store(format!(
        "DynamoDB: {}",
        aws_sdk_dynamodb::error::DisplayErrorContext(e)
    ))
}

#[async_trait]
impl BudgetStore for DynamoDbBudgetStore {
    async fn take(
        &self,
        key: &str,
        takes: &[LaneTake],
        now_us: i64,
        known: &[Option<i64>],
    ) -> Result<Taken> {
        let mut seen: Vec<Option<i64>> = known.to_vec();
        seen.resize(takes.len(), None);
        for _ in 0..MAX_WRITES {
            // What we believe the item holds must allow the take, else it is refused unwritten.
            if apply(&seen, takes, now_us).is_none() {
                return Ok(refused(&seen, now_us));
            }
            let mut sets = vec!["#expires = :expires".to_string()];
            let mut conditions = Vec::new();
            let mut request = self
                .client
                .get()
                .await
                .update_item()
                .table_name(&self.table)
                .key("pk", AttributeValue::S(budget_key(key)))
                .expression_attribute_names("#expires", "expiresAt")
                .expression_attribute_values(":now", n(now_us))
                .expression_attribute_values(":expires", n(now_us / 1_000_000 + KEEP_SECONDS));
            for (i, (take, full_at)) in takes.iter().zip(&seen).enumerate() {
                let name = format!("#a{i}");
                request = request.expression_attribute_names(&name, attribute(take.lane));
                if full_at.is_none_or(|at| at <= now_us) {
                    sets.push(format!("{name} = :start{i}"));
                    conditions.push(format!("(attribute_not_exists({name}) OR {name} <= :now)"));
                    request = request.expression_attribute_values(
                        format!(":start{i}"),
                        n(now_us + take.cost_us),
                    );
                } else {
                    sets.push(format!("{name} = {name} + :cost{i}"));
                    conditions.push(format!("({name} > :now AND {name} <= :latest{i})"));
                    request = request
                        .expression_attribute_values(format!(":cost{i}"), n(take.cost_us))
                        .expression_attribute_values(
                            format!(":latest{i}"),
                            n(take.ceiling_us - take.cost_us),
                        );
                }
            }
            let sent = request
                .update_expression(format!("SET {}", sets.join(", ")))
                .condition_expression(conditions.join(" AND "))
                .return_values(ReturnValue::AllNew)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await;
            match sent {
                Ok(out) => {
                    let granted = takes
                        .iter()
                        .map(|t| read(out.attributes(), t.lane))
                        .collect::<Option<Vec<i64>>>()
                        .ok_or_else(|| Error::Store("a rate budget update lost its lanes".into()))?;
                    return Ok(Taken::Granted(granted));
                }
                Err(e) => match e.into_service_error() {
                    aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(failed) => {
                        // The item as it was: decide again from the truth.
                        seen = takes.iter().map(|t| read(failed.item(), t.lane)).collect();
                    }
                    other => return Err(store_error(other)),
                },
            }
        }
        Err(Error::Store(format!(
            "the rate budget {key} changed under {MAX_WRITES} writes in a row"
        )))
    }

    async fn hold_until(&self, key: &str, lane: Lane, at_least_us: i64) -> Result<()> {
        let sent = self
            .client
            .get()
            .await
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(budget_key(key)))
            .update_expression("SET #a = :at, #expires = :expires")
            .condition_expression("attribute_not_exists(#a) OR #a < :at")
            .expression_attribute_names("#a", attribute(lane))
            .expression_attribute_names("#expires", "expiresAt")
            .expression_attribute_values(":at", n(at_least_us))
            .expression_attribute_values(":expires", n(at_least_us / 1_000_000 + KEEP_SECONDS))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(()),
            // Later already: nothing to correct.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(store_error(e)),
        }
    }
}
