//! The `Dapr` service: each implemented method translates one Dapr request
//! into native calls on the caller's session; the rest answer UNIMPLEMENTED.

use dapr::dapr::proto::common::v1 as common;
use dapr::dapr::proto::runtime::v1;
use tonic::Request;

use super::streamed::Streamed;
use super::unimplemented::unimplemented_methods;
use super::{configuration, lock, metadata, secrets, state};

/// An answer of the service.
type Answer<T> = Result<tonic::Response<T>, tonic::Status>;

/// The service. It holds nothing of its own: every request finds its
/// caller's session in the request's extensions.
#[derive(Clone, Default)]
pub struct Api {}

impl Api {
    /// A new service.
    pub fn new() -> Self {
        Self::default()
    }
}

#[tonic::async_trait]
impl v1::dapr_server::Dapr for Api {
    type SubscribeTopicEventsAlpha1Stream = Streamed<v1::SubscribeTopicEventsResponseAlpha1>;
    type SubscribeConfigurationAlpha1Stream = Streamed<v1::SubscribeConfigurationResponse>;
    type SubscribeConfigurationStream = Streamed<v1::SubscribeConfigurationResponse>;
    type EncryptAlpha1Stream = Streamed<v1::EncryptResponse>;
    type DecryptAlpha1Stream = Streamed<v1::DecryptResponse>;

    async fn get_state(
        &self,
        request: Request<v1::GetStateRequest>,
    ) -> Answer<v1::GetStateResponse> {
        state::get(request).await
    }

    async fn get_bulk_state(
        &self,
        request: Request<v1::GetBulkStateRequest>,
    ) -> Answer<v1::GetBulkStateResponse> {
        state::get_bulk(request).await
    }

    async fn save_state(&self, request: Request<v1::SaveStateRequest>) -> Answer<()> {
        state::save(request).await
    }

    async fn delete_state(&self, request: Request<v1::DeleteStateRequest>) -> Answer<()> {
        state::delete(request).await
    }

    async fn delete_bulk_state(&self, request: Request<v1::DeleteBulkStateRequest>) -> Answer<()> {
        state::delete_bulk(request).await
    }

    async fn execute_state_transaction(
        &self,
        request: Request<v1::ExecuteStateTransactionRequest>,
    ) -> Answer<()> {
        state::transact(request).await
    }

    async fn try_lock_alpha1(
        &self,
        request: Request<v1::TryLockRequest>,
    ) -> Answer<v1::TryLockResponse> {
        lock::try_lock(request).await
    }

    async fn unlock_alpha1(
        &self,
        request: Request<v1::UnlockRequest>,
    ) -> Answer<v1::UnlockResponse> {
        lock::unlock(request).await
    }

    async fn get_secret(
        &self,
        request: Request<v1::GetSecretRequest>,
    ) -> Answer<v1::GetSecretResponse> {
        secrets::get(request).await
    }

    async fn get_bulk_secret(
        &self,
        request: Request<v1::GetBulkSecretRequest>,
    ) -> Answer<v1::GetBulkSecretResponse> {
        secrets::get_bulk(request).await
    }

    async fn get_configuration(
        &self,
        request: Request<v1::GetConfigurationRequest>,
    ) -> Answer<v1::GetConfigurationResponse> {
        configuration::get(request).await
    }

    async fn get_configuration_alpha1(
        &self,
        request: Request<v1::GetConfigurationRequest>,
    ) -> Answer<v1::GetConfigurationResponse> {
        configuration::get(request).await
    }

    async fn unsubscribe_configuration(
        &self,
        request: Request<v1::UnsubscribeConfigurationRequest>,
    ) -> Answer<v1::UnsubscribeConfigurationResponse> {
        configuration::unsubscribe(request).await
    }

    async fn unsubscribe_configuration_alpha1(
        &self,
        request: Request<v1::UnsubscribeConfigurationRequest>,
    ) -> Answer<v1::UnsubscribeConfigurationResponse> {
        configuration::unsubscribe(request).await
    }

    async fn get_metadata(
        &self,
        request: Request<v1::GetMetadataRequest>,
    ) -> Answer<v1::GetMetadataResponse> {
        metadata::get(request).await
    }

    async fn subscribe_topic_events_alpha1(
        &self,
        request: tonic::Request<tonic::Streaming<v1::SubscribeTopicEventsRequestAlpha1>>,
    ) -> Result<tonic::Response<Self::SubscribeTopicEventsAlpha1Stream>, tonic::Status> {
        super::pubsub::subscribe(request).await
    }

    async fn publish_event(
        &self,
        request: tonic::Request<v1::PublishEventRequest>,
    ) -> Result<tonic::Response<()>, tonic::Status> {
        super::pubsub::publish(request).await
    }

    async fn bulk_publish_event(
        &self,
        request: tonic::Request<v1::BulkPublishRequest>,
    ) -> Result<tonic::Response<v1::BulkPublishResponse>, tonic::Status> {
        super::pubsub::bulk_publish(request).await
    }

    async fn bulk_publish_event_alpha1(
        &self,
        request: tonic::Request<v1::BulkPublishRequest>,
    ) -> Result<tonic::Response<v1::BulkPublishResponse>, tonic::Status> {
        super::pubsub::bulk_publish(request).await
    }

    async fn invoke_service(
        &self,
        request: tonic::Request<v1::InvokeServiceRequest>,
    ) -> Result<tonic::Response<common::InvokeResponse>, tonic::Status> {
        super::invoke::invoke_service(request).await
    }

    async fn invoke_binding(
        &self,
        request: tonic::Request<v1::InvokeBindingRequest>,
    ) -> Result<tonic::Response<v1::InvokeBindingResponse>, tonic::Status> {
        super::bindings::invoke_binding(request).await
    }

    async fn subscribe_configuration_alpha1(
        &self,
        request: Request<v1::SubscribeConfigurationRequest>,
    ) -> Answer<Self::SubscribeConfigurationAlpha1Stream> {
        configuration::subscribe(request).await
    }

    async fn subscribe_configuration(
        &self,
        request: Request<v1::SubscribeConfigurationRequest>,
    ) -> Answer<Self::SubscribeConfigurationStream> {
        configuration::subscribe(request).await
    }

    async fn encrypt_alpha1(
        &self,
        _request: tonic::Request<tonic::Streaming<v1::EncryptRequest>>,
    ) -> Result<tonic::Response<Self::EncryptAlpha1Stream>, tonic::Status> {
        Err(super::unimplemented("EncryptAlpha1"))
    }

    async fn decrypt_alpha1(
        &self,
        _request: tonic::Request<tonic::Streaming<v1::DecryptRequest>>,
    ) -> Result<tonic::Response<Self::DecryptAlpha1Stream>, tonic::Status> {
        Err(super::unimplemented("DecryptAlpha1"))
    }

    unimplemented_methods! {
        query_state_alpha1(v1::QueryStateRequest) -> v1::QueryStateResponse;
        register_actor_timer(v1::RegisterActorTimerRequest) -> ();
        unregister_actor_timer(v1::UnregisterActorTimerRequest) -> ();
        register_actor_reminder(v1::RegisterActorReminderRequest) -> ();
        unregister_actor_reminder(v1::UnregisterActorReminderRequest) -> ();
        unregister_actor_reminders_by_type(v1::UnregisterActorRemindersByTypeRequest) -> v1::UnregisterActorRemindersByTypeResponse;
        list_actor_reminders(v1::ListActorRemindersRequest) -> v1::ListActorRemindersResponse;
        get_actor_state(v1::GetActorStateRequest) -> v1::GetActorStateResponse;
        get_actor_reminder(v1::GetActorReminderRequest) -> v1::GetActorReminderResponse;
        execute_actor_state_transaction(v1::ExecuteActorStateTransactionRequest) -> ();
        invoke_actor(v1::InvokeActorRequest) -> v1::InvokeActorResponse;
        set_metadata(v1::SetMetadataRequest) -> ();
        subtle_get_key_alpha1(v1::SubtleGetKeyRequest) -> v1::SubtleGetKeyResponse;
        subtle_encrypt_alpha1(v1::SubtleEncryptRequest) -> v1::SubtleEncryptResponse;
        subtle_decrypt_alpha1(v1::SubtleDecryptRequest) -> v1::SubtleDecryptResponse;
        subtle_wrap_key_alpha1(v1::SubtleWrapKeyRequest) -> v1::SubtleWrapKeyResponse;
        subtle_unwrap_key_alpha1(v1::SubtleUnwrapKeyRequest) -> v1::SubtleUnwrapKeyResponse;
        subtle_sign_alpha1(v1::SubtleSignRequest) -> v1::SubtleSignResponse;
        subtle_verify_alpha1(v1::SubtleVerifyRequest) -> v1::SubtleVerifyResponse;
        start_workflow_alpha1(v1::StartWorkflowRequest) -> v1::StartWorkflowResponse;
        get_workflow_alpha1(v1::GetWorkflowRequest) -> v1::GetWorkflowResponse;
        purge_workflow_alpha1(v1::PurgeWorkflowRequest) -> ();
        terminate_workflow_alpha1(v1::TerminateWorkflowRequest) -> ();
        pause_workflow_alpha1(v1::PauseWorkflowRequest) -> ();
        resume_workflow_alpha1(v1::ResumeWorkflowRequest) -> ();
        raise_event_workflow_alpha1(v1::RaiseEventWorkflowRequest) -> ();
        start_workflow_beta1(v1::StartWorkflowRequest) -> v1::StartWorkflowResponse;
        get_workflow_beta1(v1::GetWorkflowRequest) -> v1::GetWorkflowResponse;
        purge_workflow_beta1(v1::PurgeWorkflowRequest) -> ();
        terminate_workflow_beta1(v1::TerminateWorkflowRequest) -> ();
        pause_workflow_beta1(v1::PauseWorkflowRequest) -> ();
        resume_workflow_beta1(v1::ResumeWorkflowRequest) -> ();
        raise_event_workflow_beta1(v1::RaiseEventWorkflowRequest) -> ();
        shutdown(v1::ShutdownRequest) -> ();
        schedule_job_alpha1(v1::ScheduleJobRequest) -> v1::ScheduleJobResponse;
        schedule_job(v1::ScheduleJobRequest) -> v1::ScheduleJobResponse;
        get_job_alpha1(v1::GetJobRequest) -> v1::GetJobResponse;
        get_job(v1::GetJobRequest) -> v1::GetJobResponse;
        delete_job_alpha1(v1::DeleteJobRequest) -> v1::DeleteJobResponse;
        delete_job(v1::DeleteJobRequest) -> v1::DeleteJobResponse;
        delete_jobs_by_prefix_alpha1(v1::DeleteJobsByPrefixRequestAlpha1) -> v1::DeleteJobsByPrefixResponseAlpha1;
        delete_jobs_by_prefix(v1::DeleteJobsByPrefixRequest) -> v1::DeleteJobsByPrefixResponse;
        list_jobs_alpha1(v1::ListJobsRequestAlpha1) -> v1::ListJobsResponseAlpha1;
        list_jobs(v1::ListJobsRequest) -> v1::ListJobsResponse;
        converse_alpha1(v1::ConversationRequest) -> v1::ConversationResponse;
        converse_alpha2(v1::ConversationRequestAlpha2) -> v1::ConversationResponseAlpha2;
        create_index_alpha1(v1::CreateIndexRequestAlpha1) -> ();
        get_index_alpha1(v1::GetIndexRequestAlpha1) -> v1::GetIndexResponseAlpha1;
        list_indexes_alpha1(v1::ListIndexesRequestAlpha1) -> v1::ListIndexesResponseAlpha1;
        delete_index_alpha1(v1::DeleteIndexRequestAlpha1) -> ();
        index_documents_alpha1(v1::IndexDocumentsRequestAlpha1) -> v1::IndexDocumentsResponseAlpha1;
        get_documents_alpha1(v1::GetDocumentsRequestAlpha1) -> v1::GetDocumentsResponseAlpha1;
        delete_documents_alpha1(v1::DeleteDocumentsRequestAlpha1) -> v1::DeleteDocumentsResponseAlpha1;
        search_alpha1(v1::SearchRequestAlpha1) -> v1::SearchResponseAlpha1;
        create_collection_alpha1(v1::CreateCollectionRequestAlpha1) -> ();
        get_collection_alpha1(v1::GetCollectionRequestAlpha1) -> v1::GetCollectionResponseAlpha1;
        list_collections_alpha1(v1::ListCollectionsRequestAlpha1) -> v1::ListCollectionsResponseAlpha1;
        delete_collection_alpha1(v1::DeleteCollectionRequestAlpha1) -> ();
        upsert_vectors_alpha1(v1::UpsertVectorsRequestAlpha1) -> v1::UpsertVectorsResponseAlpha1;
        delete_vectors_alpha1(v1::DeleteVectorsRequestAlpha1) -> v1::DeleteVectorsResponseAlpha1;
        get_vectors_alpha1(v1::GetVectorsRequestAlpha1) -> v1::GetVectorsResponseAlpha1;
        query_vectors_alpha1(v1::QueryVectorsRequestAlpha1) -> v1::QueryVectorsResponseAlpha1;
        batch_query_vectors_alpha1(v1::BatchQueryVectorsRequestAlpha1) -> v1::BatchQueryVectorsResponseAlpha1;
    }
}
