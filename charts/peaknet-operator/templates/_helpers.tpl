{{/* Names and labels shared by the templates. */}}

{{- define "peaknet-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "peaknet-operator.serviceAccountName" -}}
{{- default (include "peaknet-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "peaknet-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "peaknet-operator.labels" -}}
{{ include "peaknet-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Namespaces where pipelines run: driver.namespaces, else the watched one, else the release's. */}}
{{- define "peaknet-operator.driverNamespaces" -}}
{{- if .Values.driver.namespaces -}}
{{- toJson .Values.driver.namespaces -}}
{{- else if .Values.watchNamespace -}}
{{- toJson (list .Values.watchNamespace) -}}
{{- else -}}
{{- toJson (list .Release.Namespace) -}}
{{- end -}}
{{- end -}}

{{/*
What the operator's code calls on the API (tests/operator/test_chart_rbac.py records a run of
the real operator and compares): kopf watches and patches its resources and posts events; the
reconcile gets, creates and patches the children (claims and RayJobs are created only); the
status timer reads the RayCluster, the RayJob and lists the pods. `update` on the finalizers
subresource lets the children's owner references block the owner's deletion where the
OwnerReferencesPermissionEnforcement admission plugin is on.
*/}}
{{- define "peaknet-operator.namespacedRules" -}}
- apiGroups: [peaknet.slac.stanford.edu]
  resources: [peaknetpipelines]
  verbs: [list, watch, patch]
- apiGroups: [peaknet.slac.stanford.edu]
  resources: [peaknetpipelines/status]
  verbs: [patch]
- apiGroups: [peaknet.slac.stanford.edu]
  resources: [peaknetpipelines/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, create, patch]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, create]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# Whether the driver's ServiceAccount (the Ray head's) exists in the pipeline's namespace.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, create, patch]
# delete: a finished run's RayCluster is deleted to release its pods (GPUs included).
- apiGroups: [ray.io]
  resources: [rayclusters]
  verbs: [get, create, patch, delete]
- apiGroups: [ray.io]
  resources: [rayjobs]
  verbs: [get, create]
{{- end -}}
