//! The Dynamics 365 adapter against the Dynamics emulator: the whole conformance suite.

crm_sync_tests::conformance_suite!(crm_sync_tests::conformance::dynamics::start);

#[tokio::test]
async fn a_soak_with_lost_answers_leaves_one_record_per_caller_and_booking() {
    let fixture = crm_sync_tests::conformance::Fixture::new(
        crm_sync_tests::conformance::dynamics::start().await,
    )
    .await;
    crm_sync_tests::conformance::a_soak_with_lost_answers_leaves_one_record_per_caller_and_booking(
        fixture,
    )
    .await;
}
