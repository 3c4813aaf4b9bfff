"""The queue between "received" and "applied": the `Queue` interface, the embedded SQLite queue, Amazon
SQS, a JMS broker over STOMP, and the wrapper that encrypts every payload (docs/queues.md)."""
