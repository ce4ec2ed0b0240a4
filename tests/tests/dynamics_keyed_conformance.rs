//! The Dynamics 365 adapter against the Dynamics emulator with an alternate key on the contacts'
//! and leads' email, named in the connection (`alternateKeys`): the whole conformance suite and
//! the soak again, with every create of a contact or a lead an upsert by that key.

crm_sync_tests::conformance_suite!(crm_sync_tests::conformance::dynamics::start_keyed);

#[tokio::test]
async fn a_soak_with_lost_answers_leaves_one_record_per_caller_and_booking() {
    let fixture = crm_sync_tests::conformance::Fixture::new(
        crm_sync_tests::conformance::dynamics::start_keyed().await,
    )
    .await;
    crm_sync_tests::conformance::a_soak_with_lost_answers_leaves_one_record_per_caller_and_booking(
        fixture,
    )
    .await;
}
