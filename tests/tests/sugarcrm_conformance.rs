//! The SugarCRM adapter against the SugarCRM emulator: the whole conformance suite.

crm_sync_tests::conformance_suite!(crm_sync_tests::conformance::sugarcrm::start);

#[tokio::test]
async fn a_soak_with_lost_answers_leaves_one_record_per_caller_and_booking() {
    let fixture = crm_sync_tests::conformance::Fixture::new(
        crm_sync_tests::conformance::sugarcrm::start().await,
    )
    .await;
    crm_sync_tests::conformance::a_soak_with_lost_answers_leaves_one_record_per_caller_and_booking(
        fixture,
    )
    .await;
}
