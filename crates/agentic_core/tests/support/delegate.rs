//! [`event_store_wrapper!`]: implements `EventStore` for a wrapper around
//! an `inner` store, with the methods the wrapper writes itself and every
//! projection read passed on unchanged.

/// `impl EventStore for $wrapper { $items… }` plus imports and the
/// projection reads, passed on to `self.inner` (for wrappers that play with the log only).
macro_rules! event_store_wrapper {
    ($wrapper:ty { $($items:tt)* }) => {
        #[async_trait::async_trait]
        impl agentic_core::EventStore for $wrapper {
        $($items)*

        async fn import(
            &self,
            records: Vec<agentic_core::EventEnvelope>,
        ) -> Result<agentic_core::ChainHead, agentic_core::StoreError> {
            self.inner.import(records).await
        }

        async fn element(
            &self,
            id: uuid::Uuid,
        ) -> Result<Option<agentic_core::ElementData>, agentic_core::StoreError> {
            self.inner.element(id).await
        }

        async fn elements(
            &self,
            after: agentic_core::Cursor,
            limit: usize,
        ) -> Result<agentic_core::Page<agentic_core::ElementData>, agentic_core::StoreError> {
            self.inner.elements(after, limit).await
        }

        async fn task(
            &self,
            id: uuid::Uuid,
        ) -> Result<Option<agentic_core::TaskRecord>, agentic_core::StoreError> {
            self.inner.task(id).await
        }

        async fn task_by_key(
            &self,
            key: &str,
        ) -> Result<Option<agentic_core::TaskRecord>, agentic_core::StoreError> {
            self.inner.task_by_key(key).await
        }

        async fn tasks(
            &self,
            filter: agentic_core::TaskFilter,
            after: agentic_core::Cursor,
            limit: usize,
        ) -> Result<agentic_core::Page<agentic_core::TaskRecord>, agentic_core::StoreError> {
            self.inner.tasks(filter, after, limit).await
        }

        async fn workflow(
            &self,
            id: uuid::Uuid,
        ) -> Result<Option<agentic_core::workflow::RunRecord>, agentic_core::StoreError> {
            self.inner.workflow(id).await
        }

        async fn workflows(
            &self,
            filter: agentic_core::TaskFilter,
            after: agentic_core::Cursor,
            limit: usize,
        ) -> Result<agentic_core::Page<agentic_core::workflow::RunRecord>, agentic_core::StoreError> {
            self.inner.workflows(filter, after, limit).await
        }

        async fn agent(
            &self,
            name: &str,
            after: agentic_core::Cursor,
            limit: usize,
        ) -> Result<Option<agentic_core::AgentView>, agentic_core::StoreError> {
            self.inner.agent(name, after, limit).await
        }

        async fn agents(
            &self,
            after: agentic_core::Cursor,
            limit: usize,
        ) -> Result<agentic_core::Page<agentic_core::AgentView>, agentic_core::StoreError> {
            self.inner.agents(after, limit).await
        }

        async fn plugins(
            &self,
            after: agentic_core::Cursor,
            limit: usize,
        ) -> Result<
            agentic_core::Page<agentic_core::plugin::PluginRecord>,
            agentic_core::StoreError,
        > {
            self.inner.plugins(after, limit).await
        }
    }
    };
}
