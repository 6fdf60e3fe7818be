"""Push notifications of incoming calls: device tokens, the dispatcher, APNs and FCM senders."""
